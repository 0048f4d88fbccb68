"""The ``bussdcc`` command's arguments: one sub-command each, and one-line usage errors."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..kernel import Severity
from ..kernel import protocol as p
from . import _commands as c
from . import _record
from ._completion import completes, device_names, runtime_names, worker_names

#: What ``bussdcc --help`` says first.
DESCRIPTION = "The ``bussdcc`` command: run a system, and inspect and steer a live runtime over its control endpoint."


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (``--help`` has the rest)."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit with status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _how_many(text: str) -> int | None:
    """``-n`` of ``events``: a count >= 0, or ``all`` (None: every one there is)."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'all', not {text!r}")
    return n


def parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bussdcc", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('bussdcc').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def find(cmd: argparse.ArgumentParser, positional_name: bool = False) -> None:
        if positional_name:
            which = cmd.add_argument("name", nargs="?", help="the runtime's name (default: the only one running)")
        else:
            which = cmd.add_argument("-r", "--runtime", help="the runtime's name (default: the only one running)")
        completes(which, runtime_names)
        cmd.add_argument("--run-dir", help="the runtime's run directory (instead of finding it by name)")
        cmd.set_defaults(runtime=None)

    def policy(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--config", default="null", help="JSON: a Device's config, or a Service's constructor arguments"
        )
        cmd.add_argument("--restart", help="restart policy (true, false, or a policy name)")
        cmd.add_argument(
            "--set",
            dest="policy",
            action="append",
            metavar="KEY=VALUE",
            help="a supervision setting, e.g. max_restarts=3",
        )

    cmd = sub.add_parser(
        "run",
        help="run a system in the foreground",
        description="Run a system in the foreground "
        "until SIGINT/SIGTERM or `bussdcc shutdown`; speaks systemd's notify protocol.",
    )
    cmd.add_argument("target", help="a .toml system file, or module:attribute (a Runtime or a function returning one)")
    cmd.add_argument("--name", help="the runtime's name (default: from the file or module)")
    cmd.add_argument("-v", "--verbose", action="store_true", help="print every dispatched message")
    cmd.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve Prometheus metrics and a live status page there (needs bussdcc[web]; e.g. 127.0.0.1:9100)",
    )
    cmd.add_argument("--record", metavar="FILE", help="record every dispatched message to this MCAP file")
    _record.add_options(cmd)
    cmd.add_argument("--log-dir", help="write each worker's output to DIR/WORKER.log, rotated (overrides the file's)")
    cmd.set_defaults(fn=c.run)

    cmd = sub.add_parser("status", help="show a runtime's workers", description="Show a runtime and its workers.")
    find(cmd, positional_name=True)
    cmd.add_argument("--json", action="store_true", help="print JSON (the fields of Runtime.workers())")
    cmd.set_defaults(fn=c.status)

    ops: tuple[tuple[p.WorkerOp, str], ...] = (
        ("start", "start a stopped worker"),
        ("stop", "stop a worker"),
        ("restart", "restart a worker"),
    )
    for op, what in ops:
        cmd = sub.add_parser(op, help=what, description=f"{what[0].upper()}{what[1:]} and wait for the outcome.")
        completes(cmd.add_argument("worker", help="a Service's name or a Device's id"), worker_names)
        find(cmd)
        cmd.set_defaults(fn=c.worker_op(op))

    cmd = sub.add_parser(
        "shutdown", help="shut a runtime down", description="Shut a runtime down and wait until it is."
    )
    find(cmd, positional_name=True)
    cmd.add_argument("--reason", help="recorded in runtime.shutting_down")
    cmd.add_argument("--timeout", type=float, default=c.LONG, help="seconds to wait (default %(default)s)")
    cmd.set_defaults(fn=c.shutdown)

    cmd = sub.add_parser(
        "reload",
        help="re-read a runtime's system file and apply it",
        description="Re-read the .toml file a runtime was started from and apply it with the fewest restarts "
        "(as SIGHUP does); print the plan. A file that fails validation changes nothing.",
    )
    find(cmd, positional_name=True)
    cmd.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    cmd.set_defaults(fn=c.reload)

    cmd = sub.add_parser(
        "spawn",
        help="add a worker to a running runtime",
        description="Add a Service or Device to a running runtime, run in a fresh interpreter that imports it.",
    )
    cmd.add_argument("target", help="module:Class of a Service or Device")
    cmd.add_argument("--name", required=True, help="the worker's name (a Device's id)")
    policy(cmd)
    find(cmd)
    cmd.set_defaults(fn=c.spawn)

    cmd = sub.add_parser("remove", help="stop and remove a worker", description="Stop a worker and forget it.")
    completes(cmd.add_argument("worker", help="a Service's name or a Device's id"), worker_names)
    find(cmd)
    cmd.set_defaults(fn=c.remove)

    cmd = sub.add_parser(
        "scale",
        help="change the size of a pool",
        description="Start the next members of a pool (NAME-k) or stop and remove the highest-numbered ones.",
    )
    cmd.add_argument("pool", help="the pool's name")
    cmd.add_argument("instances", type=int, help="how many members it should have")
    find(cmd)
    cmd.set_defaults(fn=c.scale)

    cmd = sub.add_parser(
        "worker",
        help="run one standalone worker that joins a running runtime",
        description="Run a Service or Device in this process as a worker of the runtime in RUN_DIR.",
    )
    cmd.add_argument("--connect", required=True, metavar="RUN_DIR", help="the runtime's run directory")
    cmd.add_argument("target", help="module:Class of a Service or Device")
    cmd.add_argument("--name", required=True, help="the worker's name (a Device's id)")
    policy(cmd)
    cmd.add_argument("--policy-json", help=argparse.SUPPRESS)
    for internal in ("--slot", "--incarnation", "--parent-pid"):
        cmd.add_argument(internal, type=int, help=argparse.SUPPRESS)  # set by the runtime when it starts one
    cmd.set_defaults(fn=c.worker)

    cmd = sub.add_parser(
        "call",
        help="call a device's method",
        description="Call a public method of a Device in its own process and print the result as JSON.",
    )
    completes(cmd.add_argument("device", help="the Device's id"), device_names)
    cmd.add_argument("method", help="the name of a public method its class defines")
    cmd.add_argument("args", nargs="?", default="[]", help="positional arguments as a JSON array (default [])")
    cmd.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    cmd.add_argument("--timeout", type=float, default=10.0, help="seconds the device has (default %(default)s)")
    find(cmd)
    cmd.set_defaults(fn=c.call)

    cmd = sub.add_parser(
        "replay",
        help="feed a recording to a system's processes",
        description="Run the Processes and Interfaces of TARGET (as `bussdcc run` takes it) fed the recorded "
        "messages, in order, under recorded time; its Services and Devices are not started.",
    )
    cmd.add_argument("file", nargs="+", metavar="FILE", help="the recording (.mcap); several play in the order given")
    cmd.add_argument("target", help="a .toml system file, or module:attribute (a Runtime or a function returning one)")
    pace = cmd.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="scale the recorded gaps: 2 plays twice as fast")
    pace.add_argument("--fast", action="store_true", help="do not wait between messages")
    cmd.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="GLOB",
        help="feed only recorded messages whose name matches (repeatable), e.g. 'plant.*'",
    )
    cmd.add_argument("-v", "--verbose", action="store_true", help="print every dispatched message")
    cmd.set_defaults(fn=c.replay)

    cmd = sub.add_parser(
        "events",
        help="print the event stream",
        description="Print recent dispatched messages (and with -f, every new one), one line each.",
    )
    find(cmd, positional_name=True)
    cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new messages")
    cmd.add_argument(
        "-n",
        "--lines",
        type=_how_many,
        default=20,
        metavar="N",
        help="recent matching messages to show first: a number (0: none, as tail -n 0) or 'all' (default %(default)s)",
    )
    cmd.add_argument("--severity", default="DEBUG", choices=[s.name for s in Severity], help="lowest severity shown")
    cmd.add_argument(
        "--file",
        action="append",
        metavar="FILE",
        help="read a recording (.mcap) instead of a live runtime; repeat for rotated files (-n all: every message)",
    )
    cmd.add_argument("--name", dest="pattern", metavar="GLOB", help="only messages whose name matches, e.g. 'worker.*'")
    cmd.add_argument("--json", action="store_true", help="one JSON object per line")
    cmd.set_defaults(fn=c.events)

    cmd = sub.add_parser(
        "record",
        help="record a live runtime to an MCAP file",
        description="Record every message a live runtime dispatches, and its workers' output, "
        "to an MCAP file until the runtime ends or SIGINT/SIGTERM.",
    )
    find(cmd, positional_name=True)
    cmd.add_argument("-o", "--output", required=True, metavar="FILE", help="the MCAP file to write")
    cmd.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE first, so its message classes are recorded with typed schemas",
    )
    _record.add_options(cmd)
    cmd.set_defaults(fn=_record.record)

    cmd = sub.add_parser(
        "logs",
        help="print a worker's log file",
        description="Print the last lines of a worker's log file (and with -f, every new one), "
        "from a live runtime's log directory or from --log-dir.",
    )
    completes(cmd.add_argument("worker", help="a Service's name or a Device's id"), worker_names)
    cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new lines, across rotations")
    cmd.add_argument("-n", "--lines", type=int, default=20, help="last lines to show first (default %(default)s)")
    cmd.add_argument("--log-dir", help="read this log directory (a runtime that has ended) instead of a runtime's")
    find(cmd)
    cmd.set_defaults(fn=c.logs)
    return parser

"""The ``bussdcc`` command's arguments: one sub-command each, and one-line usage errors."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..kernel import Severity
from ..kernel import protocol as p
from . import _commands as c
from . import _record

#: What ``bussdcc --help`` says first.
DESCRIPTION = "The ``bussdcc`` command: run a system, and inspect and steer a live runtime over its control endpoint."


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (``--help`` has the rest)."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit with status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bussdcc", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('bussdcc').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def find(cmd: argparse.ArgumentParser, positional_name: bool = False) -> None:
        if positional_name:
            cmd.add_argument("name", nargs="?", help="the runtime's name (default: the only one running)")
        else:
            cmd.add_argument("-r", "--runtime", help="the runtime's name (default: the only one running)")
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
    cmd.add_argument("--record", metavar="FILE", help="record every dispatched message to this MCAP file")
    _record.add_options(cmd)
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
        cmd.add_argument("worker", help="a Service's name or a Device's id")
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
    cmd.add_argument("worker", help="a Service's name or a Device's id")
    find(cmd)
    cmd.set_defaults(fn=c.remove)

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
    cmd.add_argument("device", help="the Device's id")
    cmd.add_argument("method", help="the name of a public method its class defines")
    cmd.add_argument("args", nargs="?", default="[]", help="positional arguments as a JSON array (default [])")
    cmd.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    cmd.add_argument("--timeout", type=float, default=10.0, help="seconds the device has (default %(default)s)")
    find(cmd)
    cmd.set_defaults(fn=c.call)

    cmd = sub.add_parser(
        "events",
        help="print the event stream",
        description="Print recent dispatched messages (and with -f, every new one), one line each.",
    )
    find(cmd, positional_name=True)
    cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new messages")
    cmd.add_argument(
        "-n", "--lines", type=int, default=20, help="recent matching messages to show first (default %(default)s)"
    )
    cmd.add_argument("--severity", default="DEBUG", choices=[s.name for s in Severity], help="lowest severity shown")
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
    return parser

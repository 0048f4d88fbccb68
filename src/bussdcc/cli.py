"""The ``bussdcc`` command: run a system, and inspect and steer a live runtime over its control endpoint."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import _client, _launch, _render
from ._config import parse_policy_value
from .errors import BussdccError
from .kernel import Severity
from .kernel import protocol as p
from .supervisor._control import RECENT

__all__ = ["main"]

_LONG = 120.0  # seconds a command waits for stops, starts and spawns (each bounded by the worker's timeouts)


def _target(args: argparse.Namespace, name: str | None = None) -> Path:
    return _client.locate(name if name is not None else args.runtime, args.run_dir)


def _status(args: argparse.Namespace) -> int:
    run_dir = _target(args, args.name)
    with _client.Client(run_dir) as client:
        reply = client.call(p.StatusRequest(client.secret))
    assert isinstance(reply, p.StatusReply)
    if args.json:
        print(json.dumps({"runtime": reply.runtime, "workers": reply.workers}, indent=2))
    else:
        print(_render.status_table(reply))
    return 0


def _worker_op(op: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        with _client.Client(_target(args)) as client:
            reply = client.call(p.WorkerRequest(client.secret, op, args.worker), _LONG)
        assert isinstance(reply, p.Done)
        print(reply.outcome)
        return 0

    return command


def _shutdown(args: argparse.Namespace) -> int:
    run_dir = _target(args, args.name)
    pid = _client.runtime_pid(run_dir)
    name = _client.runtime_name(run_dir)
    with _client.Client(run_dir) as client:
        client.call(p.ShutdownRequest(client.secret, args.reason))
    if not _client.wait_gone(run_dir, pid, args.timeout):
        raise BussdccError(
            f"the runtime (pid {pid}) was asked to shut down but is still running after {args.timeout:g}s"
        )
    print(f"{name} shut down (pid {pid})")
    return 0


def _policy(args: argparse.Namespace) -> str:
    policy = {}
    for item in args.policy or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BussdccError(f"--set takes KEY=VALUE, not {item!r}")
        policy[key] = parse_policy_value(value)
    if args.restart is not None:
        policy["restart"] = parse_policy_value(args.restart)
    return json.dumps(policy)


def _config(args: argparse.Namespace) -> str:
    try:
        json.loads(args.config)
    except json.JSONDecodeError as exc:
        raise BussdccError(f"--config is not valid JSON: {exc}") from None
    return str(args.config)


def _spawn(args: argparse.Namespace) -> int:
    request_args = (args.target, args.name, _config(args), _policy(args))
    with _client.Client(_target(args)) as client:
        reply = client.call(p.SpawnRequest(client.secret, *request_args), _LONG)
    assert isinstance(reply, p.Done)
    print(reply.outcome)
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _client.Client(_target(args)) as client:
        reply = client.call(p.WorkerRequest(client.secret, "remove", args.worker), _LONG)
    assert isinstance(reply, p.Done)
    print(reply.outcome)
    return 0


def _json_arg(text: str, what: str, kind: type) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BussdccError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise BussdccError(f"{what} must be a JSON {'array' if kind is list else 'object'}")
    return text


def _call(args: argparse.Namespace) -> int:
    call_args = _json_arg(args.args, "ARGS", list)
    kwargs = _json_arg(args.kwargs, "--kwargs", dict)
    request = (args.device, args.method, call_args, kwargs, args.timeout)
    with _client.Client(_target(args)) as client:
        reply = client.call(p.CallRequest(client.secret, *request), args.timeout + 10.0)
    assert isinstance(reply, p.Done)
    print(reply.outcome)
    return 0


def _events(args: argparse.Namespace) -> int:
    minimum = Severity[args.severity]
    # The recent messages are filtered before the last --lines of them are shown.
    recent: deque[str] | None = deque(maxlen=max(0, args.lines))
    with _client.Client(_target(args, args.name)) as client:
        for evt in client.events(RECENT if args.lines > 0 else 0, args.follow):
            if evt is None:
                for line in recent or ():
                    print(line, flush=True)
                recent = None
                continue
            if evt.dropped:
                print(f"-- {evt.dropped} events dropped (this reader was too slow)", file=sys.stderr, flush=True)
            if evt.severity < minimum:
                continue
            record = _render.event_record(evt)
            if args.pattern and not fnmatch.fnmatchcase(record["name"], args.pattern):
                continue
            line = json.dumps(record, default=str) if args.json else _render.event_line(record)
            if recent is not None:
                recent.append(line)
            else:
                print(line, flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    return _launch.run(args.target, args.name, args.verbose)


def _worker(args: argparse.Namespace) -> int:
    return _launch.worker(
        Path(args.connect),
        args.target,
        args.name,
        _config(args),
        args.policy_json or _policy(args),
        slot=args.slot,
        incarnation=args.incarnation,
        parent_pid=args.parent_pid,
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (``--help`` has the rest)."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit with status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bussdcc", description=__doc__)
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
    cmd.set_defaults(fn=_run)

    cmd = sub.add_parser("status", help="show a runtime's workers", description="Show a runtime and its workers.")
    find(cmd, positional_name=True)
    cmd.add_argument("--json", action="store_true", help="print JSON (the fields of Runtime.workers())")
    cmd.set_defaults(fn=_status)

    for op, what in (("start", "start a stopped worker"), ("stop", "stop a worker"), ("restart", "restart a worker")):
        cmd = sub.add_parser(op, help=what, description=f"{what[0].upper()}{what[1:]} and wait for the outcome.")
        cmd.add_argument("worker", help="a Service's name or a Device's id")
        find(cmd)
        cmd.set_defaults(fn=_worker_op(op))

    cmd = sub.add_parser(
        "shutdown", help="shut a runtime down", description="Shut a runtime down and wait until it is."
    )
    find(cmd, positional_name=True)
    cmd.add_argument("--reason", help="recorded in runtime.shutting_down")
    cmd.add_argument("--timeout", type=float, default=_LONG, help="seconds to wait (default %(default)s)")
    cmd.set_defaults(fn=_shutdown)

    cmd = sub.add_parser(
        "spawn",
        help="add a worker to a running runtime",
        description="Add a Service or Device to a running runtime, run in a fresh interpreter that imports it.",
    )
    cmd.add_argument("target", help="module:Class of a Service or Device")
    cmd.add_argument("--name", required=True, help="the worker's name (a Device's id)")
    policy(cmd)
    find(cmd)
    cmd.set_defaults(fn=_spawn)

    cmd = sub.add_parser("remove", help="stop and remove a worker", description="Stop a worker and forget it.")
    cmd.add_argument("worker", help="a Service's name or a Device's id")
    find(cmd)
    cmd.set_defaults(fn=_remove)

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
    cmd.set_defaults(fn=_worker)

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
    cmd.set_defaults(fn=_call)

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
    cmd.set_defaults(fn=_events)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bussdcc`` command; return its exit code."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except BussdccError as exc:
        print(f"bussdcc {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0

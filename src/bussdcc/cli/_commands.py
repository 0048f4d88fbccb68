"""What each ``bussdcc`` command does, given its parsed arguments."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BussdccError, ConfigError
from ..kernel import Severity
from ..kernel import protocol as p
from ..kernel.protocol import RECENT
from . import _client, _launch, _logs, _recorded, _reload, _render
from ._config import parse_policy_value

LONG = 120.0  # seconds a command waits for stops, starts and spawns (each bounded by the worker's timeouts)


def _target(args: argparse.Namespace, name: str | None = None) -> Path:
    return _client.locate(name if name is not None else args.runtime, args.run_dir)


def status(args: argparse.Namespace) -> int:
    """``bussdcc status``: a runtime and its workers."""
    run_dir = _target(args, args.name)
    with _client.Client(run_dir) as client:
        reply = client.call(p.StatusRequest(client.secret))
    assert isinstance(reply, p.StatusReply)
    if args.json:
        print(json.dumps({"runtime": reply.runtime, "workers": reply.workers}, indent=2))
    else:
        print(_render.status_table(reply))
    return 0


def worker_op(op: p.WorkerOp) -> Callable[[argparse.Namespace], int]:
    """``bussdcc start|stop|restart WORKER``."""

    def command(args: argparse.Namespace) -> int:
        with _client.Client(_target(args)) as client:
            reply = client.call(p.WorkerRequest(client.secret, op, args.worker), LONG)
        assert isinstance(reply, p.Done)
        print(reply.outcome)
        return 0

    return command


def shutdown(args: argparse.Namespace) -> int:
    """``bussdcc shutdown``: shut a runtime down and wait until it is."""
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


def reload(args: argparse.Namespace) -> int:
    """``bussdcc reload``: re-read a runtime's system file and apply it; print the plan."""
    with _client.Client(_target(args, args.name)) as client:
        reply = client.call(p.ReloadRequest(client.secret, args.dry_run), LONG)
    assert isinstance(reply, p.Reloaded)
    print(_reload.render(reply))
    return 0


def _policy(args: argparse.Namespace) -> p.Policy:
    if getattr(args, "policy_json", None):
        # Set by the runtime when it execs a worker: the policy its spawn request carried.
        try:
            policy = json.loads(args.policy_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON: {exc}") from exc
        if not isinstance(policy, dict):
            raise ConfigError("the policy must be a JSON object")
        return policy
    policy = {}
    for item in args.policy or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BussdccError(f"--set takes KEY=VALUE, not {item!r}")
        policy[key] = parse_policy_value(value)
    if args.restart is not None:
        policy["restart"] = parse_policy_value(args.restart)
    return policy


def _config(args: argparse.Namespace) -> Any:
    try:
        return json.loads(args.config)
    except json.JSONDecodeError as exc:
        raise BussdccError(f"--config is not valid JSON: {exc}") from None


def spawn(args: argparse.Namespace) -> int:
    """``bussdcc spawn``: add a worker to a running runtime."""
    request_args = (args.target, args.name, _config(args), _policy(args))
    with _client.Client(_target(args)) as client:
        reply = client.call(p.SpawnRequest(client.secret, *request_args), LONG)
    assert isinstance(reply, p.Done)
    print(reply.outcome)
    return 0


def remove(args: argparse.Namespace) -> int:
    """``bussdcc remove WORKER``: stop a worker and forget it."""
    with _client.Client(_target(args)) as client:
        reply = client.call(p.WorkerRequest(client.secret, "remove", args.worker), LONG)
    assert isinstance(reply, p.Done)
    print(reply.outcome)
    return 0


def scale(args: argparse.Namespace) -> int:
    """``bussdcc scale POOL N``: change the size of a pool."""
    with _client.Client(_target(args)) as client:
        reply = client.call(p.ScaleRequest(client.secret, args.pool, args.instances), LONG)
    assert isinstance(reply, p.Done)
    print(reply.outcome)
    return 0


def _json_arg(text: str, what: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BussdccError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise BussdccError(f"{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


def call(args: argparse.Namespace) -> int:
    """``bussdcc call DEVICE METHOD``: call a device's method, print the result."""
    call_args = _json_arg(args.args, "ARGS", list)
    kwargs = _json_arg(args.kwargs, "--kwargs", dict)
    request = (args.device, args.method, call_args, kwargs, args.timeout)
    with _client.Client(_target(args)) as client:
        reply = client.call(p.CallRequest(client.secret, *request), args.timeout + 10.0)
    assert isinstance(reply, p.Done)
    print(reply.outcome)
    return 0


def events(args: argparse.Namespace) -> int:
    """``bussdcc events``: print the event stream."""
    if args.file:
        return _recorded.events_file(args)
    minimum = Severity[args.severity]
    # The recent messages are filtered before the last --lines of them are shown.
    # -n 0: none of them (with -f, only new ones, as tail -n 0 -f); -n all (None): every one kept.
    recent: deque[str] | None = deque(maxlen=args.lines)
    with _client.Client(_target(args, args.name)) as client:
        for evt in client.events(RECENT if args.lines is None or args.lines > 0 else 0, args.follow):
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


def run(args: argparse.Namespace) -> int:
    """``bussdcc run``: run a system in the foreground."""
    from ._record import recording

    return _launch.run(
        args.target, args.name, args.verbose, recording(args, args.record), http=args.http, log_dir=args.log_dir
    )


def logs(args: argparse.Namespace) -> int:
    """``bussdcc logs WORKER``: the end of a worker's log file (and with -f, what is added to it)."""
    return _logs.show(
        args.worker,
        lines=args.lines,
        follow=args.follow,
        log_dir=args.log_dir,
        runtime=args.runtime,
        run_dir=args.run_dir,
    )


def worker(args: argparse.Namespace) -> int:
    """``bussdcc worker``: run one standalone worker that joins a runtime."""
    return _launch.worker(
        Path(args.connect),
        args.target,
        args.name,
        _config(args),
        _policy(args),
        slot=args.slot,
        incarnation=args.incarnation,
        parent_pid=args.parent_pid,
    )


def replay(args: argparse.Namespace) -> int:
    """``bussdcc replay FILE TARGET``: a system's Processes and Interfaces fed a recording."""
    from ._replaying import replay as replay_file

    return replay_file(args)

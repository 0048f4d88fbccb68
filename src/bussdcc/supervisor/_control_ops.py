"""What the control endpoint does to a runtime: status, start/stop/restart/remove, spawn, join, reload.

Runs on the control thread (status) and on a thread per request (the rest),
against a runtime seen only through :class:`ManagedRuntime`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ..errors import ConfigError, ControlError, DeviceCallError
from ..kernel import Device, Service
from ..kernel import protocol as p
from ..kernel._calls import callable_methods
from ._managed import ManagedRuntime
from ._specs import build, check_supervised
from ._workers import WorkerState


class ControlServer(Protocol):
    """What a request needs of the control server that carries it."""

    @property
    def started(self) -> float: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def dropped(self) -> int: ...
    def watch(self, pid: int) -> None: ...


_IDLE = (WorkerState.STOPPED, WorkerState.FAILED)


def status(rt: ManagedRuntime, server: ControlServer) -> p.StatusReply:
    """The runtime and its workers, every ``WorkerStatus`` field as is."""
    stats = rt.stats()
    runtime: dict[str, Any] = {
        "name": rt.name,
        "pid": os.getpid(),
        "version": rt.version,
        "uptime": round(time.time() - server.started, 3),
        "booted": rt.booted,
        "run_dir": str(server.run_dir),
        "events_dropped": server.dropped,
        **msgspec.to_builtins(stats),  # every counter of rt.stats(), as it grows
    }
    workers = [msgspec.to_builtins(w) for w in rt.workers()]
    return p.StatusReply(runtime, workers)


def act(rt: ManagedRuntime, server: ControlServer, req: p.ControlRequest) -> p.ControlReply:
    """Carry out a request that waits on workers (runs on the control pool)."""
    match req:
        case p.WorkerRequest():
            return p.Done(_worker_op(rt, req.op, req.worker))
        case p.SpawnRequest():
            return p.Done(_spawn(rt, server, req))
        case p.JoinRequest():
            return _join(rt, server, req)
        case p.CallRequest():
            return p.Done(_call(rt, req))
        case p.ScaleRequest():
            return p.Done(_scale(rt, req))
        case p.ReloadRequest():
            return rt.reload(req.dry_run)
    raise ControlError(f"unexpected request {type(req).__name__}")


def _worker_op(rt: ManagedRuntime, op: str, name: str) -> str:
    if op == "start":
        return _started(rt.start_worker(name).pid, name)
    if op == "restart":
        was = rt.worker(name).state
        after = rt.restart_worker(name)
        stopped = f"{name} was {was}" if was in _IDLE else f"{name} stopped"
        return f"{stopped}; {_started(after.pid, name)}"
    if op in {"stop", "remove"}:
        was = rt.worker(name).state
        if op == "stop":
            rt.stop_worker(name)
        else:
            rt.remove_worker(name)
        stopped = f"{name} was {was}" if was in _IDLE else f"{name} stopped"
        return stopped if op == "stop" else f"{stopped}; removed {name}"
    raise ControlError(f"unknown operation {op!r}")


def _scale(rt: ManagedRuntime, req: p.ScaleRequest) -> str:
    before = {w.name for w in rt.workers()}
    members = rt.scale(req.pool, req.instances)
    added = [f"{w.name} (pid {w.pid if w.pid is not None else w.state})" for w in members if w.name not in before]
    # By member number, as the pool counts them (crawler-2 before crawler-10).
    removed = sorted(before - {w.name for w in rt.workers()}, key=_member_number)
    said = f"{req.pool}: {len(members)} instance{'' if len(members) == 1 else 's'}"
    if added:
        said += f"; started {', '.join(added)}"
    if removed:
        said += f"; removed {', '.join(removed)}"
    return said


def _member_number(name: str) -> tuple[int, str]:
    """A pool member's number (``crawler-10`` is 10), to sort by; what has none sorts by name."""
    tail = name.rpartition("-")[2]
    return (int(tail), name) if tail.isdigit() else (-1, name)


def _started(pid: int | None, name: str) -> str:
    return f"{name} started (pid {pid})"


def _call(rt: ManagedRuntime, req: p.CallRequest) -> str:
    """Call a device's method with JSON arguments; return the result as JSON."""
    devices = sorted(w.name for w in rt.workers() if w.role == "device")
    device = rt.component(req.device) if req.device in devices else None
    if not isinstance(device, Device):
        known = ", ".join(devices) or "none"
        raise ControlError(f"unknown device {req.device!r} (devices: {known})")
    methods = callable_methods(type(device))
    method = methods.get(req.method)
    if method is None:
        known = ", ".join(sorted(methods)) or "none"
        raise ControlError(f"{req.device} has no callable method {req.method!r} (methods: {known})")
    handle = rt.device(type(device), req.device, timeout=req.timeout)
    try:
        result = handle.call(method, *req.args, **req.kwargs)
    except DeviceCallError as exc:
        raise ControlError(f"{type(exc).__name__}: {exc}") from None
    try:
        return msgspec.json.encode(result).decode()
    except (TypeError, msgspec.EncodeError):
        return json.dumps(repr(result))


def _import_within(pol: dict[str, Any]) -> float:
    """How long importing and building a target may take: its ``start_timeout`` (policy, else the default)."""
    limit = pol.get("start_timeout", Service.start_timeout)
    if isinstance(limit, int | float) and not isinstance(limit, bool) and 0 < limit < float("inf"):
        return float(limit)
    return Service.start_timeout


def _bounded(target: str, name: str, cfg: Any, pol: p.Policy) -> object:
    """``build(...)`` on a daemon thread of its own, waited for at most ``start_timeout``.

    A module whose import never returns must not hold the request (nor, at exit, the
    process): its thread is left behind, blocked, and the request fails.
    """
    limit = _import_within(pol)
    done = threading.Event()
    box: list[object] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            box.append(build(target, name, cfg, pol))
        except BaseException as exc:  # handed to the requester, raised there
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="bussdcc-control-import", daemon=True).start()
    if not done.wait(limit):
        raise ControlError(
            f"importing and building {target} did not finish within start_timeout {limit:g}s: nothing was added"
        )
    if error:
        raise error[0]
    return box[0]


def _component(target: str, name: str, config: Any, policy: p.Policy) -> Service | Device:
    forked_only = sorted(k for k in ("env", "cwd", "user", "group") if k in policy)
    if forked_only:
        # A worker run in a fresh interpreter is not made by the fork server, which applies them.
        raise ConfigError(
            f"{', '.join(forked_only)}: only for workers the fork server starts (a system file, or from Python)"
        )
    component = _bounded(target, name, config, policy)
    if not isinstance(component, Service | Device):
        raise ConfigError(f"{target} is not a Service or a Device: only those run as workers")
    check_supervised(component)
    return component


def _spawn(rt: ManagedRuntime, server: ControlServer, req: p.SpawnRequest) -> str:
    # The parent imports the class too: to know its settings, and to refuse a bad target now.
    component = _component(req.target, req.name, req.config, req.policy)
    argv = [sys.executable, "-m", "bussdcc", "worker", "--connect", str(server.run_dir), req.target]
    config, policy = (msgspec.json.encode(x).decode() for x in (req.config, req.policy))
    argv += ["--name", req.name, "--config", config, "--policy-json", policy]
    rt.add_exec_worker(component, argv)
    worker = rt.worker(req.name)
    if worker.state is not WorkerState.RUNNING:
        raise ControlError(
            f"{req.name} was added but did not start: {worker.last_exit or worker.state} "
            f"(it stays registered, {worker.state}; `bussdcc remove {req.name}` removes it)"
        )
    return f"spawned {req.name} (pid {worker.pid if worker.pid is not None else '?'})"


def _join(rt: ManagedRuntime, server: ControlServer, req: p.JoinRequest) -> p.Joined:
    component = _component(req.target, req.name, req.config, req.policy)
    component.restart = False  # whoever started it restarts it (systemd, a shell loop)
    inc = rt.join_worker(component, req.pid)
    server.watch(req.pid)
    return p.Joined(inc.number, inc.slot, rt.endpoint, os.getpid(), inc.identity, inc.token)

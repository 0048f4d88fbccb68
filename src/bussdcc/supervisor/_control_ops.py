"""What the control endpoint does to a runtime: status, start/stop/restart/remove, spawn, join."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ConfigError, ControlError, DeviceCallError
from ..kernel import Device, Service
from ..kernel import protocol as p
from ..kernel._calls import callable_methods
from ._hub import Hub
from ._specs import build, check_supervised
from ._supervisor import Supervisor
from ._workers import Incarnation, Worker, WorkerState

if TYPE_CHECKING:
    from ._control import ControlServer
    from ._runtime import Runtime

_IDLE = (WorkerState.STOPPED, WorkerState.FAILED)


def status(rt: Runtime, server: ControlServer) -> p.StatusReply:
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


def act(rt: Runtime, server: ControlServer, req: p.ControlRequest) -> p.ControlReply:
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
    raise ControlError(f"unexpected request {type(req).__name__}")


@contextmanager
def _lifecycle(rt: Runtime) -> Iterator[None]:
    """Hold the runtime's lifecycle lock, unless it is shutting down (which holds it while it waits for us)."""
    while not rt._lifecycle.acquire(timeout=0.05):
        _live(rt)
    try:
        _live(rt)
        yield
    finally:
        rt._lifecycle.release()


def _live(rt: Runtime) -> tuple[Supervisor, Hub]:
    sup, hub = rt._sup, rt._hub
    if sup is None or hub is None or rt._stopping:
        raise ControlError("the runtime is shutting down")
    return sup, hub


def _find(rt: Runtime, name: str) -> Worker:
    sup, _ = _live(rt)
    worker: Worker | None = sup.workers.get(name)
    if worker is None:
        known = ", ".join(sorted(sup.workers)) or "none"
        raise ControlError(f"unknown worker {name!r} (workers: {known})")
    return worker


def _worker_op(rt: Runtime, op: str, name: str) -> str:
    if op not in ("start", "stop", "restart", "remove"):
        raise ControlError(f"unknown operation {op!r}")
    with _lifecycle(rt):  # not while the runtime boots or shuts down
        worker = _find(rt, name)
        # Refuse before acting: a refused request changes nothing.
        if op == "remove" and worker.group is not None:
            raise ControlError(f"{name} is a member of the group {worker.group!r}: it cannot be removed")
        if op == "restart" and worker.argv == []:
            raise ControlError(f"{name} is a standalone worker: restart it where it was started")
        if op == "start":
            return _start(rt, worker)
        if op == "restart":
            was = _stop(rt, worker)
            return f"{was}; {_start(rt, worker)}"
        outcome = _stop(rt, worker)
        if op == "stop":
            return outcome
        sup, hub = _live(rt)
        hub.call(lambda: sup.remove(name))
        rt._services.pop(name, None)
        rt._devices.pop(name, None)
        return f"{outcome}; removed {name}"


def _start(rt: Runtime, worker: Worker) -> str:
    sup, hub = _live(rt)
    if worker.argv == []:
        raise ControlError(f"{worker.name} is a standalone worker: start it where it was started")

    def go() -> Incarnation:
        if worker.state not in _IDLE:
            raise ControlError(f"{worker.name} is {worker.state} already")
        return sup.start(worker.name)

    inc = hub.call(go)
    inc.outcome.wait(worker.component.start_timeout + 5.0)
    pid = inc.pid
    if inc.ready and worker.current is inc:
        return f"{worker.name} started (pid {pid})"
    raise ControlError(f"{worker.name} did not start: {worker.last_exit or worker.state}")


def _stop(rt: Runtime, worker: Worker) -> str:
    if worker.state in _IDLE:
        return f"{worker.name} was {worker.state}"
    rt._stop_worker(worker.name)
    if worker.state not in _IDLE:
        raise ControlError(f"{worker.name} did not stop: it is {worker.state}")
    return f"{worker.name} stopped"


def _call(rt: Runtime, req: p.CallRequest) -> str:
    """Call a device's method with JSON arguments; return the result as JSON."""
    _live(rt)
    device = rt._devices.get(req.device)
    if device is None:
        known = ", ".join(sorted(rt._devices)) or "none"
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
    component = _bounded(target, name, config, policy)
    if not isinstance(component, Service | Device):
        raise ConfigError(f"{target} is not a Service or a Device: only those run as workers")
    check_supervised(component)
    return component


def _spawn(rt: Runtime, server: ControlServer, req: p.SpawnRequest) -> str:
    # The parent imports the class too: to know its settings, and to refuse a bad target now.
    component = _component(req.target, req.name, req.config, req.policy)
    argv = [sys.executable, "-m", "bussdcc", "worker", "--connect", str(server.run_dir), req.target]
    config, policy = (msgspec.json.encode(x).decode() for x in (req.config, req.policy))
    argv += ["--name", req.name, "--config", config, "--policy-json", policy]
    with _lifecycle(rt):
        _live(rt)
        rt._check_name(req.name, "worker", rt._worker_names())
        rt._add_worker(component, argv=argv)
        if isinstance(component, Device):
            rt._devices[component.id] = component
        else:
            rt._services[component.name] = component
    worker = _find(rt, req.name)
    if worker.state is not WorkerState.RUNNING:
        raise ControlError(
            f"{req.name} was added but did not start: {worker.last_exit or worker.state} "
            f"(it stays registered, {worker.state}; `bussdcc remove {req.name}` removes it)"
        )
    inc = worker.current
    return f"spawned {req.name} (pid {inc.pid if inc is not None else '?'})"


def _join(rt: Runtime, server: ControlServer, req: p.JoinRequest) -> p.Joined:
    component = _component(req.target, req.name, req.config, req.policy)
    component.restart = False  # whoever started it restarts it (systemd, a shell loop)
    with _lifecycle(rt):
        sup, hub = _live(rt)
        existing: Worker | None = sup.workers.get(req.name)
        if existing is None:
            rt._check_name(req.name, "worker", rt._worker_names())
            hub.call(lambda: sup.add(component, argv=[]))
            if isinstance(component, Device):
                rt._devices[component.id] = component
            else:
                rt._services[component.name] = component
        elif existing.argv != []:
            raise ControlError(f"a worker named {req.name!r} exists and is not a standalone one")
        inc = hub.call(lambda: sup.join(req.name, req.pid))
    server.watch(req.pid)
    return p.Joined(inc.number, inc.slot, rt.endpoint, os.getpid(), inc.identity, inc.token)

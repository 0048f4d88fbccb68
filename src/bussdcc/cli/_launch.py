"""``bussdcc run`` (a whole system in the foreground) and ``bussdcc worker`` (one worker process)."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ControlError, ProtocolError
from ..kernel import Device, Event, Message, Service
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ..kernel._boundary import SlotTable, WorkerSpec
from ..kernel._layout import SLOTS_FILE, workers_endpoint
from ..kernel._recording import Recording
from ..supervisor import Runtime, SignalRuntime
from ..worker._logs import STANDALONE_ENV
from . import _reload
from ._client import Client
from ._config import build, import_target, install, load_system
from ._notify import Watchdog, notify, watchdog_interval


def load_runtime(target: str, name: str | None = None, http: str | None = None, log_dir: str | None = None) -> Runtime:
    """A runtime from a ``.toml`` system file or a ``module:attribute`` (a Runtime, or a function making one).

    ``log_dir`` (``--log-dir``) overrides the file's ``[runtime] log_dir`` and a Runtime's own.
    """
    if target.endswith(".toml"):
        spec = load_system(Path(target))
        rt: Runtime = SignalRuntime(
            name=name or spec.name,
            http=http or spec.http,
            record=spec.record,
            snapshot=spec.snapshot,
            log_dir=log_dir or spec.log_dir,
        )
        install(spec, rt)
        # SIGHUP and `bussdcc reload` re-read the file and apply it.
        rt.set_reloader(_reload.Reloader(Path(target), spec, rt))
        return rt
    sys.path.insert(0, os.getcwd())  # as `python -m` would: modules beside the caller are importable
    obj = import_target(target)
    if not isinstance(obj, Runtime) and callable(obj):
        try:
            obj = obj()
        except (Exception, SystemExit) as exc:
            raise ConfigError(f"{target}() raised {exc!r}") from exc
    if not isinstance(obj, Runtime):
        raise ConfigError(f"{target} is not a Runtime, nor a function returning one")
    if http:
        obj.http = http
    if name:
        obj.name = name
    elif obj.name == "__main__":  # named after this command's own main module
        obj.name = target.partition(":")[0].rsplit(".", 1)[-1]
    if log_dir:
        obj.log_dir = Path(log_dir).absolute()
    return obj


def run(
    target: str,
    name: str | None = None,
    verbose: bool = False,
    recording: Recording | None = None,
    http: str | None = None,
    *,
    log_dir: str | None = None,
) -> int:
    """Boot the system, serve until a signal or a shutdown request, shut down; the exit code."""
    rt = load_runtime(target, name, http, log_dir)
    if recording is not None:
        rt.set_recording(recording)
    stopped_by: list[str] = []  # the signal that asked for the shutdown, to say so at the end
    if not isinstance(rt, SignalRuntime):
        # Ours to handle as a SignalRuntime would: the whole process group gets these from a
        # service manager or a shell, and none of them may end the runtime by its default action.
        # From the main thread's signal handler: never block in it.
        def on_signal(signum: int, frame: Any) -> None:
            action = SignalRuntime.SIGNAL_ACTIONS[signum]
            if action == "shutdown":
                reason = signal.strsignal(signum) or f"signal {signum}"
                stopped_by.append(reason)
                threading.Thread(target=rt.shutdown, args=(reason,), name="bussdcc-stop").start()
                return
            said: Message = m.SystemReload() if action == "reload" else m.SystemSignal(signal=signum, action=action)
            threading.Thread(target=rt.emit, args=(said,), name="bussdcc-signal", daemon=True).start()

        for signum in SignalRuntime.SIGNAL_ACTIONS:
            signal.signal(signum, on_signal)

    def stopping(evt: Event[m.RuntimeShuttingDown]) -> None:
        notify("STOPPING=1")

    def reloaded(evt: Event[m.SystemReload]) -> None:
        if evt.payload.error is not None:
            print(f"bussdcc: {rt.name}: reload: {evt.payload.error}", file=sys.stderr, flush=True)
        elif evt.payload.plan is not None:
            print(f"bussdcc: {rt.name} reloaded: {_reload.summary(evt.payload.plan)}", file=sys.stderr, flush=True)

    rt.events.subscribe(m.RuntimeShuttingDown, stopping)
    rt.events.subscribe(m.SystemReload, reloaded)
    if verbose:
        rt.events.subscribe(Message, _print_event)
    rt.boot()
    print(f"bussdcc: {rt.name} running (pid {os.getpid()}, {rt.run_dir})", file=sys.stderr, flush=True)
    if rt.http_url is not None:
        print(f"bussdcc: status page (with the right to act): {rt.http_url}", file=sys.stderr, flush=True)
    notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=running {rt.name}")
    interval = watchdog_interval()
    dog = Watchdog(interval) if interval else None
    if dog is not None:
        dog.start()
    try:
        rt.run()
    finally:
        if dog is not None:
            dog.stop()
    why = rt.halt_reason or (stopped_by[0] if stopped_by else "requested")
    print(f"bussdcc: {rt.name} shut down ({why})", file=sys.stderr, flush=True)
    # A failure exits non-zero, so a service manager's restart-on-failure applies.
    return 1 if rt.failure is not None else 0


def _print_event(evt: Event[Any]) -> None:
    print(f"{evt.time.isoformat(timespec='milliseconds')} {evt.payload.name} [{evt.source}]", flush=True)


def _watch_parent(pid: int) -> None:
    # A standalone worker has no death signal from the runtime: it watches the runtime's pid itself.
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)

    def main() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=main, name="bussdcc-parent-watch", daemon=True).start()


def _read_key() -> tuple[bytes, bytes]:
    """The routing id and secret the fork server left in the pipe it handed down (read once, then closed)."""
    fd_text = os.environ.pop(p.KEY_FD_ENV, "")
    try:
        fd = int(fd_text)
    except ValueError:
        raise ConfigError(
            f"--slot, --incarnation and --parent-pid are for workers the runtime starts itself ({p.KEY_FD_ENV} unset)"
        ) from None
    data = b""
    try:
        while len(data) < 65536 and (chunk := os.read(fd, 4096)):  # a few dozen bytes are expected
            data += chunk
    except OSError as exc:
        raise ConfigError(f"cannot read the worker's key from fd {fd}: {exc.strerror}") from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        return p.decode_key(data)
    except ProtocolError as exc:
        raise ConfigError(f"the worker's key is malformed: {exc}") from None


def worker(
    run_dir: Path,
    target: str,
    name: str,
    config: Any,
    policy: p.Policy,
    *,
    slot: int | None = None,
    incarnation: int | None = None,
    parent_pid: int | None = None,
) -> int:
    """Run one Service or Device as a worker of the runtime in ``run_dir`` (never returns on success)."""
    sys.path.insert(0, os.getcwd())
    component = build(target, name, config, policy)
    if not isinstance(component, Service | Device):
        raise ConfigError(f"{target} is not a Service or a Device: only those run as workers")
    role: p.Role = "device" if isinstance(component, Device) else "service"
    slots = SlotTable(path=run_dir / SLOTS_FILE)
    if slot is not None and incarnation is not None and parent_pid is not None:
        # Started by the runtime's fork server, which already counts on this slot.
        endpoint = workers_endpoint(run_dir)
        identity, token = _read_key()
        spec = WorkerSpec(name, role, incarnation, endpoint, slot, slots, parent_pid, identity, token)
    else:
        with Client(run_dir) as client:
            reply = client.call(p.JoinRequest(client.secret, target, name, os.getpid(), config, policy), 30.0)
        if not isinstance(reply, p.Joined):
            raise ControlError(f"unexpected reply {type(reply).__name__}")
        _watch_parent(reply.parent_pid)
        os.environ[STANDALONE_ENV] = "1"
        spec = WorkerSpec(
            name,
            role,
            reply.incarnation,
            reply.endpoint,
            reply.slot,
            slots,
            reply.parent_pid,
            reply.identity,
            reply.token,
        )
    from ..worker._main import run as run_worker

    def stop_gracefully() -> None:
        # SIGTERM (systemd stopping the unit, say): ask the runtime for a graceful stop,
        # so the worker runs stop()/disconnect() and is recorded as stopped, not failed.
        try:
            with Client(run_dir) as client:
                client.call(p.WorkerRequest(client.secret, "stop", name), 60.0)
        except BaseException:
            os._exit(128 + signal.SIGTERM)  # no runtime to ask: end as SIGTERM would have

    run_worker(spec, component, on_term=None if slot is not None else stop_gracefully)

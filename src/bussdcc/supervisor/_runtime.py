"""The Runtime: registration, boot and shutdown order, and the authoritative dispatch."""

from __future__ import annotations

import atexit
import math
import pickle
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from .._version import __version__
from ..errors import BootError, RegistrationError, RuntimeStateError
from ..kernel import (
    RUNTIME_SOURCE,
    ClockProtocol,
    Context,
    Device,
    DeviceHandle,
    Event,
    EventBus,
    Interface,
    Message,
    Process,
    Service,
    Severity,
    SlotTable,
    StateStore,
    Strategy,
    SystemClock,
)
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ..kernel._text import emit_report
from . import _fds
from ._calls import ParentPort
from ._control import ControlServer
from ._dispatcher import Dispatcher
from ._forkserver import ForkServer, threads_fault
from ._hub import Hub
from ._output import OutputSink
from ._rundir import RunDirGuard, default_name, make_run_dir, remove_run_dir
from ._specs import check_group, check_supervised
from ._supervisor import SpawnRefused, Supervisor
from ._workers import Worker, WorkerStatus

#: The worker entry point, named rather than imported: supervisor and worker stay apart.
WORKER_ENTRY = "bussdcc.worker._main:run"
_BOOT_GRACE = 5.0
D = TypeVar("D", bound=Device)


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Counters of a runtime since boot."""

    dispatched: int
    rejected: int
    lost: int
    restarts: dict[str, int]
    #: Events not delivered to the Services because shutdown had begun while they were behind.
    undelivered: int = 0


class _Receiver:
    __slots__ = ("component", "ctx", "interface", "name")

    def __init__(self, name: str, component: Process, ctx: Context) -> None:
        self.name = name
        self.component = component
        self.ctx = ctx
        self.interface = isinstance(component, Interface)


class Runtime:
    """The coordination authority: owns the context, boots, dispatches, supervises, shuts down.

    Every Service and Device runs in its own worker process; Processes and
    Interfaces run here. Every message, from here or from any worker, is
    dispatched by this object.
    """

    def __init__(
        self,
        *,
        clock: ClockProtocol | None = None,
        events: EventBus | None = None,
        state: StateStore | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or default_name()
        self.clock: ClockProtocol = clock or SystemClock()
        self.events = events or EventBus()
        self.events.set_error_sink(self.emit)
        self.state = state or StateStore()
        self.version = __version__
        self._calls = ParentPort(lambda: self._devices)
        self.ctx = self._context(RUNTIME_SOURCE)
        self.halt_reason: str | None = None
        #: Why the runtime halted on a failure (not a request or a signal); None otherwise.
        self.failure: str | None = None
        self._devices: dict[str, Device] = {}
        self._processes: dict[str, Process] = {}
        self._interfaces: dict[str, Interface] = {}
        self._services: dict[str, Service] = {}
        self._groups: dict[str, tuple[Strategy, list[str]]] = {}
        self._receivers: tuple[_Receiver, ...] = ()
        self._dispatch_lock = threading.RLock()
        self._lifecycle = threading.Lock()
        self._dispatched = 0
        self._booted = False
        self._up = False  # resources exist (between boot start and shutdown end)
        self._down = threading.Event()
        self._booted_since_run = False
        self._booting = False
        self._halt_pending: str | None = None
        self._halt_requested = False
        self._halt_lock = threading.Lock()
        self._stopping = False
        self._local = threading.local()
        self._run_dir: Path | None = None
        self._endpoint: str | None = None
        self._slots: SlotTable | None = None
        self._fork: ForkServer | None = None
        self._hub: Hub | None = None
        self._sup: Supervisor | None = None
        self._dispatcher: Dispatcher | None = None
        self._output: OutputSink | None = None
        self._control: ControlServer | None = None
        self._guard: RunDirGuard | None = None
        #: A thread that does nothing but wait while another boots this runtime (not a fork hazard).
        self._boot_waiter: threading.Thread | None = None
        self._last_stats = RuntimeStats(dispatched=0, rejected=0, lost=0, restarts={})

    # ---- the context ------------------------------------------------------------

    def _context(self, source: str) -> Context:
        def emit(message: Message) -> None:
            self._dispatch(Event(message, self.clock.now_utc(), source))

        return Context(
            clock=self.clock, events=self.events, state=self.state, runtime=self, emit=emit, calls=self._calls
        )

    def device(self, cls: type[D], id: str, *, timeout: float = 10.0, wait: bool = False) -> DeviceHandle[D]:
        """A typed handle to call the methods of the device ``id`` (a ``cls``) from any thread."""
        return self.ctx.device(cls, id, timeout=timeout, wait=wait)

    @property
    def booted(self) -> bool:
        """Whether boot completed and shutdown has not started."""
        return self._booted

    @property
    def endpoint(self) -> str:
        """The ``ipc://`` endpoint workers connect to (only while up)."""
        if self._endpoint is None:
            raise RuntimeStateError("the runtime has no endpoint until it boots")
        return self._endpoint

    @property
    def run_dir(self) -> Path | None:
        """The private run directory while the runtime is up."""
        return self._run_dir

    # ---- registration -----------------------------------------------------------------

    def _check_name(self, name: object, what: str, taken: dict[str, object]) -> str:
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"a {what} needs a non-empty string name, not {name!r}")
        if name in taken:
            raise RegistrationError(f"a {what} named {name!r} is registered already")
        return name

    def _worker_names(self) -> dict[str, object]:
        return {**self._devices, **self._services}

    def _check_worker(self, component: Service | Device, what: str, taken: dict[str, object]) -> None:
        """Refuse a bad name or setting of a Service or Device (checks only: it changes nothing)."""
        self._check_name(component.name, what, taken)
        check_supervised(component)
        if isinstance(component, Device):
            level = component.concurrency
            if not isinstance(level, int) or isinstance(level, bool) or level < 1:
                raise RegistrationError(f"{component.name!r}: concurrency must be an int >= 1, not {level!r}")
        elif (
            not isinstance(component.interval, int | float)
            or not math.isfinite(component.interval)
            or component.interval < 0
        ):
            raise RegistrationError(f"{component.name!r}: interval must be a number >= 0")

    def attach_device(self, device: Device) -> None:
        """Register a device; it connects in its own process at boot (or now, if booted)."""
        if not isinstance(device, Device):
            raise RegistrationError(f"attach_device() takes a Device, not {type(device).__name__}")
        self._check_worker(device, "device", self._worker_names())
        self._add_worker(device)
        self._devices[device.id] = device

    def register_service(self, service: Service) -> None:
        """Register a service; it starts in its own process at boot (or now, if booted)."""
        if not isinstance(service, Service):
            raise RegistrationError(f"register_service() takes a Service, not {type(service).__name__}")
        self._check_worker(service, "service", self._worker_names())
        self._add_worker(service)
        self._services[service.name] = service

    def _add_worker(self, component: Service | Device, argv: list[str] | None = None) -> None:
        """Supervise a component registered after boot, and start it (nothing to do before boot).

        All or nothing: if the supervisor refuses to start it (no fork server, no free slot),
        this raises :class:`RegistrationError` and nothing stays registered, so the name can
        be used again. A worker that did start and then failed stays registered, as at boot:
        ``failed`` (or in backoff, per its policy) with the reason in ``last_exit``.
        """
        sup, hub = self._sup, self._hub
        if sup is None or hub is None:
            return  # not booted: it starts with the others at boot
        if self._stopping:
            raise RegistrationError(f"cannot start {component.name!r}: the runtime is shutting down")
        pickled: bytes | None = None
        try:
            # The fork server was made at boot and never saw this object.
            if argv is None:
                pickled = pickle.dumps(("device" if isinstance(component, Device) else "service", component))
        except Exception as exc:
            raise RegistrationError(
                f"{component.name!r} is registered after boot, so it must be picklable: {exc!r}"
            ) from exc
        start = not (isinstance(component, Service) and not component.enabled)

        def add() -> None:
            sup.add(component, pickled=pickled, argv=argv)
            if not start:
                return
            try:
                sup.start(component.name)
            except BaseException as exc:
                # A refused start leaves no worker behind, `starting` with no process and its name taken.
                sup.remove(component.name)
                table = self._devices if isinstance(component, Device) else self._services
                if table.get(component.name) is component:
                    del table[component.name]
                if isinstance(exc, SpawnRefused):
                    raise RegistrationError(f"cannot start {component.name!r}: {exc}") from exc
                raise

        if self._in_handler():
            hub.call_soon(add)  # waiting here could deadlock the hub: it starts in the background
            return
        hub.call(add)
        # Registered from now on, whatever the wait below says: the supervisor has it.
        if isinstance(component, Device):
            self._devices[component.name] = component
        else:
            self._services[component.name] = component
        if start:
            self._wait_started(sup.workers[component.name])

    def register_group(
        self, name: str, members: Sequence[Service | Device], *, strategy: Strategy = "one_for_one"
    ) -> None:
        """Register Services and Devices as a group (before boot): they start in order, stop in reverse.

        ``strategy`` says who restarts when a member dies: ``"one_for_one"`` only it,
        ``"one_for_all"`` the whole group, ``"rest_for_one"`` it and the members after it.
        """
        if self._up:
            raise RegistrationError("cannot register a group after boot")
        check_group(name, members, strategy)
        if name in self._groups:
            raise RegistrationError(f"a group named {name!r} is registered already")
        # Every member is checked before any is registered: a refused group registers nothing.
        taken = dict(self._worker_names())
        for member in members:
            self._check_worker(member, "group member", taken)
            taken[member.name] = member
        for member in members:
            if isinstance(member, Device):
                self.attach_device(member)
            else:
                self.register_service(member)
        self._groups[name] = (strategy, [member.name for member in members])

    def register_process(self, process: Process) -> None:
        """Register a process (before boot); it runs in this process."""
        if not isinstance(process, Process) or isinstance(process, Interface):
            raise RegistrationError(f"register_process() takes a Process, not {type(process).__name__}")
        self._register_receiver(process, self._processes, "process")

    def register_interface(self, interface: Interface) -> None:
        """Register an interface (before boot); it runs in this process."""
        if not isinstance(interface, Interface):
            raise RegistrationError(f"register_interface() takes an Interface, not {type(interface).__name__}")
        self._register_receiver(interface, self._interfaces, "interface")

    def _register_receiver(self, component: Process, table: dict[str, Any], what: str) -> None:
        if self._up:
            raise RegistrationError(f"cannot register a {what} after boot")
        self._check_name(component.name, what, {**self._processes, **self._interfaces})
        table[component.name] = component

    # ---- dispatch ---------------------------------------------------------------------

    def emit(self, message: Message) -> None:
        """Dispatch ``message`` (source ``"runtime"``)."""
        self.ctx.emit(message)

    def _dispatch(self, evt: Event[Message], item: bytes | None = None) -> None:
        sup = self._sup
        if item is None:
            # Encode first, always: an unencodable or oversized message is refused
            # before anyone sees it, whether or not a worker wants it today.
            item = p.encode_envelope(evt.payload, evt.time.timestamp(), evt.source)
        local = self._local
        local.depth = getattr(local, "depth", 0) + 1
        try:
            self._dispatch_locked(evt, item, sup)
        finally:
            local.depth -= 1
        hub = self._hub
        if hub is not None and sup is not None and sup.outbox and not hub.in_hub:
            hub.wake()
            # Every emitter waits for room, handlers and the dispatch thread too: the hub
            # makes room without them (the rule, and why it always ends, is in _flow).
            hub.wait_for_room()

    def _on_dispatch_thread(self) -> bool:
        disp = self._dispatcher
        return disp is not None and disp.on_thread

    def _in_handler(self) -> bool:
        """Whether this thread is inside a dispatch, or is a runtime thread (so must not wait on the hub)."""
        hub = self._hub
        return getattr(self._local, "depth", 0) > 0 or (hub is not None and hub.in_hub) or self._on_dispatch_thread()

    def _dispatch_locked(self, evt: Event[Message], item: bytes, sup: Supervisor | None) -> None:
        with self._dispatch_lock:
            self._dispatched += 1
            self.events.publish(evt)
            for rec in self._receivers:
                try:
                    rec.component.handle_event(rec.ctx, evt)
                except Exception as exc:
                    if evt.payload.severity >= Severity.ERROR:
                        continue
                    tb = traceback.format_exc()
                    err: Message
                    if rec.interface:
                        err = m.InterfaceError(interface=rec.name, error=repr(exc), evt=evt, traceback=tb)
                    else:
                        err = m.ProcessError(process=rec.name, error=repr(exc), evt=evt, traceback=tb)
                    # Whatever the handler's exception says, its report must not stop the loop:
                    # the receivers after it still get this event.
                    emit_report(self._emit_report, err)
            if sup is not None and sup.targets:
                sup.post(item)
            control = self._control
            if control is not None:
                control.tap(evt.payload.severity, item)

    def _emit_report(self, report: Message) -> None:
        self._dispatch(Event(report, self.clock.now_utc(), RUNTIME_SOURCE))

    def _tap(self, severity: int, item: bytes) -> None:
        control = self._control
        if control is not None:
            with self._dispatch_lock:  # the control stream keeps dispatch's order
                control.tap(severity, item)

    def _dispatch_item(self, env: p.Envelope, item: bytes, worker: str) -> None:
        evt = p.envelope_event(env, worker)
        if env.source != worker:  # the routing id, not the frame, says who sent it
            item = p.encode_envelope(evt.payload, env.ts, worker)
        self._dispatch(evt, item)

    # ---- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> Self:
        self.boot()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self.shutdown(f"{exc_type.__name__}: {exc}" if exc_type is not None else None)
        return False

    def boot(self) -> None:
        """Start everything in the seed's order; return once every worker is ready or failed."""
        with self._lifecycle:
            if self._up:
                return
            self._up = True
            self._halt_pending = None
            self._halt_requested = False
            self._booted_since_run = True
            self._dispatched = 0
            self._down.clear()
            self.halt_reason = None
            self.failure = None
            self._receivers = tuple(
                _Receiver(name, comp, self._context(name))
                for name, comp in [*self._processes.items(), *self._interfaces.items()]
            )
            try:
                self._start_infrastructure()
            except BaseException:
                self._stop_infrastructure()
                self._up = False
                self._receivers = ()
                self._booted_since_run = False
                self._down.set()
                raise
            self._booting = True
            self._stopping = False
        try:
            self.emit(m.RuntimeBooting(version=self.version))
            if self._fork is not None and self._fork.threads:
                error = threads_fault(self._fork.threads)
                self.emit(m.RuntimeFault(part="threads", kind="threads_at_boot", error=error))
            for device in self._devices.values():
                self._start_worker(self._worker(device.id))
            for rec in self._receivers:
                self._start_receiver(rec)
            self._booted = True
            self.emit(m.RuntimeBooted(version=self.version))
            for service in self._services.values():
                if service.enabled:
                    self._start_worker(self._worker(service.name))
            with self._halt_lock:
                self._booting = False
                pending = self._halt_pending
            if pending is not None:
                raise BootError(f"boot interrupted: {pending}")
        except BaseException as exc:
            # Leave nothing running behind a boot that did not complete.
            with self._halt_lock:
                self._booting = False
            self.shutdown(self._halt_pending or f"boot failed: {exc!r}")
            if isinstance(exc, BootError) and self._halt_requested:
                return  # someone asked for the shutdown: that is not a boot failure
            raise

    def _start_infrastructure(self) -> None:
        # Before anything is made: the fork server and every worker inherit it too.
        _fds.raise_limit()
        self._run_dir = make_run_dir(self.name)
        self._endpoint = f"ipc://{self._run_dir}/workers.sock"
        self._slots = SlotTable(path=self._run_dir / "slots")
        components: dict[str, tuple[str, object]] = {d.id: ("device", d) for d in self._devices.values()}
        components.update({s.name: ("service", s) for s in self._services.values()})
        try:
            self._fork = ForkServer(
                components,
                endpoint=self._endpoint,
                slots=self._slots,
                entry=WORKER_ENTRY,
                run_dir=self._run_dir,
                waiting=() if self._boot_waiter is None else (self._boot_waiter,),
            )
        except OSError as exc:
            raise BootError(f"cannot start the fork server: {exc}") from exc
        disp = self._dispatcher = Dispatcher(on_room=self._wake_hub)
        disp.start()
        sup = Supervisor(
            fork=self._fork,
            slots=self._slots,
            state=self.state,
            clock=self.clock,
            emit=self._emit_queued,
            emit_now=self.emit,
            dispatch_item=self._dispatch_item,
            dispatcher=disp,
            halt=self._fail,
        )
        supervised: list[Service | Device] = [*self._devices.values(), *self._services.values()]
        for comp in supervised:
            sup.add(comp)
        for group, (strategy, members) in self._groups.items():
            sup.add_group(group, strategy, members)
        hub = Hub(self._endpoint, self._fork.fileno(), sup)
        sup.hub = sup.calls.hub = hub
        hub.start()
        self._sup, self._hub = sup, hub
        self._calls.attach(hub, sup.calls, disp)
        control = self._control = ControlServer(self, self._run_dir)
        control.start()
        self._guard = sup.run_dir_guard = RunDirGuard(
            self._run_dir,
            schedule=hub.call_later,
            rebind=hub.rebind,
            restore=lambda: control.restore(
                lambda error: self.emit(m.RuntimeFault(part="control", kind="rebind_failed", error=error))
            ),
            report=lambda error: self._emit_queued(m.RuntimeFault(part="run_dir", kind="run_dir_lost", error=error)),
            closed=lambda: not hub.accepting,
        )
        hub.call_soon(self._guard.start)
        fd_guard = _fds.FdGuard(control.accept, hub.fault, hub.recovered, hub.accept)

        def watch_fds() -> None:
            hub.every(_fds.PERIOD, fd_guard.check, "fd_watch")

        hub.call_soon(watch_fds)
        sup.on_output = self._output = OutputSink(self._tap)
        atexit.register(self._at_exit)

    def _worker(self, name: str) -> Worker:
        assert self._sup is not None
        return self._sup.workers[name]

    def _start_worker(self, worker: Worker) -> None:
        sup, hub = self._sup, self._hub
        assert sup is not None and hub is not None
        hub.call(lambda: sup.start(worker.name))
        self._wait_started(worker)

    def _wait_started(self, worker: Worker) -> None:
        inc = worker.current
        if inc is not None and not inc.outcome.wait(worker.component.start_timeout + _BOOT_GRACE):
            raise BootError(f"worker {worker.name!r} neither became ready nor failed in time")
        # What was said about its start is dispatched before boot goes on; what the worker
        # sends afterwards need not be (a handler may well wait for boot to return).
        disp = self._dispatcher
        if inc is not None and disp is not None:
            disp.wait_for(inc.ticket, None)
        if self._halt_pending is not None:
            raise BootError(f"boot interrupted: {self._halt_pending}")

    def _start_receiver(self, rec: _Receiver) -> None:
        try:
            rec.component.attach(rec.ctx)
            rec.component.start(rec.ctx)
        except Exception as exc:
            self._receiver_error(rec, exc)
            return
        if rec.interface:
            self.emit(m.InterfaceStarted(interface=rec.name))
        else:
            self.emit(m.ProcessStarted(process=rec.name))

    def _stop_receiver(self, rec: _Receiver) -> None:
        try:
            rec.component.stop(rec.ctx)
            rec.component.detach()
        except Exception as exc:
            self._receiver_error(rec, exc)
        if rec.interface:
            self.emit(m.InterfaceStopped(interface=rec.name))
        else:
            self.emit(m.ProcessStopped(process=rec.name))

    def _receiver_error(self, rec: _Receiver, exc: Exception) -> None:
        tb = traceback.format_exc()
        if rec.interface:
            self.emit(m.InterfaceError(interface=rec.name, error=repr(exc), traceback=tb))
        else:
            self.emit(m.ProcessError(process=rec.name, error=repr(exc), traceback=tb))

    def _stop_worker(self, name: str) -> None:
        sup, hub = self._sup, self._hub
        assert sup is not None and hub is not None
        worker = hub.call(lambda: sup.stop(name))
        comp = worker.component
        worker.done.wait(comp.stop_timeout + comp.kill_timeout + _BOOT_GRACE)
        self._settle()

    def _settle(self) -> None:
        """Wait until what the hub has handed over so far is dispatched (keeps lifecycle order)."""
        disp = self._dispatcher
        if disp is not None:
            # As long as dispatch needs: the order of lifecycle messages is part of the contract.
            disp.barrier(None)

    def _emit_queued(self, message: Message) -> None:
        """Dispatch ``message`` on the dispatch thread, after everything queued before it (hub thread)."""
        disp = self._dispatcher
        evt = Event(message, self.clock.now_utc(), RUNTIME_SOURCE)
        if disp is None:
            self._dispatch(evt)
        else:
            disp.post(lambda: self._dispatch(evt))

    def _wake_hub(self) -> None:
        hub = self._hub
        if hub is not None:
            hub.wake()

    def shutdown(self, reason: str | None = None) -> None:
        """Stop everything in reverse boot order: graceful, then SIGTERM, then SIGKILL."""
        if self._in_handler():
            # Shutdown waits on the hub and on dispatch, which this thread is part of:
            # run it beside, and return at once.
            self._halt(reason or "shutdown requested", requested=True)
            return
        with self._halt_lock:
            booting = self._booting
        if booting:
            # Boot is under way on another thread: it carries the shutdown out itself.
            self._halt(reason or "shutdown requested", requested=True)
            self._down.wait()
            return
        with self._lifecycle:
            if not self._up:
                return
            self._stopping = True
            if self._hub is not None:
                self._hub.release_waiters()
            if self._hub is not None and self._sup is not None:
                self._hub.call(self._sup.close)
            self._settle()
            self._booted = False
            self.emit(m.RuntimeShuttingDown(reason=reason))
            for name in reversed(self._services):
                self._stop_worker(name)
            for rec in reversed(self._receivers):
                self._stop_receiver(rec)
            for name in reversed(self._devices):
                self._stop_worker(name)
            if self._sup is not None and self._sup.undelivered:
                undelivered = self._sup.undelivered
                error = f"{undelivered} events were not delivered to Services that were behind when shutdown began"
                self.emit(m.RuntimeFault(part="outbox", kind="undelivered", error=error))
            self.emit(m.RuntimeShutdown(reason=reason))
            self._stop_infrastructure()
            self._receivers = ()
            self._up = False
            self._down.set()

    def _stop_infrastructure(self) -> None:
        atexit.unregister(self._at_exit)
        if self._guard is not None:
            self._guard.stop()  # the directory is ours to remove now
            self._guard = None
        self._last_stats = self.stats()
        if self._control is not None:
            self._control.stop()
            self._control = None
        if self._hub is not None:
            self._calls.detach()
            if self._sup is not None:
                calls = self._sup.calls
                try:
                    self._hub.call(lambda: calls.close("the runtime shut down"), timeout=5.0)
                except Exception:
                    pass  # the hub is gone: its callers' own deadlines end their waits
            self._hub.stop()
        if self._dispatcher is not None:
            self._dispatcher.stop()
        if self._output is not None:
            self._output.close()
            self._output = None
        if self._fork is not None:
            self._fork.close()
        if self._slots is not None:
            self._slots.close()
        if self._run_dir is not None:
            remove_run_dir(self._run_dir)
        self._hub = self._sup = self._fork = self._slots = self._dispatcher = None
        self._run_dir = self._endpoint = None

    def _fail(self, reason: str) -> None:
        """A failure the runtime cannot go on with (a critical worker given up on, the fork server lost)."""
        self.failure = reason
        self._halt(reason)

    def _halt(self, reason: str, requested: bool = False) -> None:
        if not requested:
            self.halt_reason = reason
        with self._halt_lock:
            if self._booting:
                # Boot notices it at its next step and shuts down itself (raising for a
                # failure); a failure already pending is not hidden by a request.
                if self._halt_pending is None or not requested:
                    self._halt_pending = reason
                    self._halt_requested = requested
                return
        threading.Thread(target=self.shutdown, args=(reason,), name="bussdcc-halt", daemon=True).start()

    def _at_exit(self) -> None:
        self.shutdown("interpreter exit")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the runtime has shut down; return False on timeout."""
        return self._down.wait(timeout)

    def run(self) -> None:
        """Boot (unless booted since the last run), block until shutdown; Ctrl-C shuts down."""
        # A runtime booted and then halted (a signal, a critical failure)
        # before run() is entered is over: run() must not boot it again.
        try:
            if not self._booted_since_run:
                self.boot()
            self._down.wait()
        except KeyboardInterrupt:
            self.shutdown("KeyboardInterrupt")
        finally:
            self._booted_since_run = False

    # ---- inspection -----------------------------------------------------------------

    def workers(self) -> list[WorkerStatus]:
        """A status snapshot of every Service and Device worker."""
        sup = self._sup
        # Read without the hub: callable from handlers, never waits on dispatch.
        return sup.statuses() if sup is not None else []

    def stats(self) -> RuntimeStats:
        """Counters since the last boot (kept after shutdown)."""
        sup = self._sup
        if sup is None:
            return self._last_stats
        return RuntimeStats(
            dispatched=self._dispatched,
            rejected=sup.rejected + sup.rejected_items,
            lost=sup.lost,
            # The hub thread adds and removes workers meanwhile: copy the table in one C call first.
            restarts={w.name: w.restarts for w in tuple(sup.workers.values())},
            undelivered=sup.undelivered,
        )


__all__ = ["Runtime", "RuntimeStats"]

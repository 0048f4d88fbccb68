"""The Runtime: the public face of a runtime, its boot and shutdown order, and worker management.

Runs on the caller's thread (boot, shutdown, registration, management) and on
a ``bussdcc-halt`` thread for a shutdown asked for from a handler or a signal.
What it delegates runs elsewhere: dispatch (``_dispatch``) on the emitting
thread, supervision (``_supervisor``) on the hub thread, the control endpoint
(``_control``) on its own thread, through the narrow protocol of ``_managed``.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

from .._version import __version__
from ..errors import BootError, BussdccError, RegistrationError, RuntimeStateError
from ..kernel import (
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
    StateStore,
    Strategy,
    SystemClock,
)
from ..kernel import _builtin as m
from ..kernel._event import RUNTIME_SOURCE
from ..kernel._recording import Recorder, Recording, check_available
from ._assembly import Assembly, Hooks, assemble
from ._calls import ParentPort
from ._dispatch import Dispatch, Receiver
from ._flow import weigh
from ._forksafety import threads_fault
from ._lifecycle import Lifecycle, Phase
from ._live import LiveChanges
from ._managed import RuntimeStats
from ._pools import Ahead, PoolManagement
from ._postmortem import LOG_BACKUPS, LOG_MAX_BYTES, log_options
from ._registry import Registry
from ._replay import Replay, ReplayClock, ReplayReport, validate_speed
from ._rundir import default_name
from ._workers import WorkerStatus

D = TypeVar("D", bound=Device)


class Runtime(PoolManagement, LiveChanges):
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
        http: str | None = None,
        record: str | os.PathLike[str] | Recording | None = None,
        snapshot: float | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        """``record``: an MCAP file to record every dispatched message to (or a :class:`Recording`);
        ``snapshot``: seconds of the recent past to write out when a worker fails (see the README)."""
        self.name = name or default_name()
        #: ``HOST:PORT`` to serve Prometheus metrics and the status page on while up (``bussdcc[web]``).
        self.http = http
        if http is not None:
            from ._http import parse_listen

            parse_listen(http)  # a bad address is refused now, not at boot
        #: Where each worker's output goes, one rotating file per worker (None: nowhere but our output).
        self.log_dir: Path | None = None if log_dir is None else Path(log_dir).absolute()
        #: A log file's size before it is rotated, and how many rotated files are kept.
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        log_options(self.log_dir, log_max_bytes, log_backups)  # a bad setting is refused here
        self.clock: ClockProtocol = clock or SystemClock()
        self.events = events or EventBus()
        self.events.set_error_sink(self.emit)
        self.state = state or StateStore()
        self.version = __version__
        self._registry = Registry()
        self._pools = {}
        self._calls = ParentPort(lambda: self._registry.devices)
        self._dispatch = Dispatch(self.events, self.clock)
        self.ctx = self._context(RUNTIME_SOURCE)
        self.halt_reason: str | None = None
        #: Why the runtime halted on a failure (not a request or a signal); None otherwise.
        self.failure: str | None = None
        self._lc = Lifecycle()
        #: The replay under way (see replay()), which a shutdown ends.
        self._replaying: Replay | None = None
        self._parts: Assembly | None = None
        #: Notified by the hub thread whenever the supervisor says something (see wait_for_worker).
        self._changed = threading.Condition()
        self._booted_since_run = False
        #: A thread that does nothing but wait while another boots this runtime (not a fork hazard).
        self._boot_waiter: threading.Thread | None = None
        self._last_stats = RuntimeStats(dispatched=0, rejected=0, lost=0, restarts={})
        self._reload_lock = threading.Lock()  # one reload of the system file at a time
        self._recording = Recording()
        #: The number of the next recording file (a runtime booted again does not overwrite the last).
        self._record_index = 0
        self.set_recording(record, snapshot)

    def set_recording(self, record: str | os.PathLike[str] | Recording | None, snapshot: float | None = None) -> None:
        """Record from the next boot on: to the MCAP file ``record`` (or as a :class:`Recording` says)."""
        if self._lc.phase is not Phase.DOWN:
            raise RuntimeStateError("recording is set before boot")
        if isinstance(record, Recording):
            recording = record
        else:
            recording = Recording(path=None if record is None else os.fspath(record))
        if snapshot is not None:
            recording = dataclasses.replace(recording, snapshot=snapshot)
        if recording.enabled:
            check_available()
        self._recording = recording
        self._record_index = 0

    # ---- the context ------------------------------------------------------------

    def _context(self, source: str) -> Context:
        # The dispatch's own method, bound to the source: no Python frame in between.
        emit = functools.partial(self._dispatch.emit, source=source)
        return Context(
            clock=self.clock, events=self.events, state=self.state, runtime=self, emit=emit, calls=self._calls
        )

    def device(self, cls: type[D], id: str, *, timeout: float = 10.0, wait: bool = False) -> DeviceHandle[D]:
        """A typed handle to call the methods of the device ``id`` (a ``cls``) from any thread."""
        return self.ctx.device(cls, id, timeout=timeout, wait=wait)

    @property
    def booted(self) -> bool:
        """Whether boot completed and shutdown has not started."""
        return self._lc.announced

    @property
    def endpoint(self) -> str:
        """The ``ipc://`` endpoint workers connect to (only while up)."""
        parts = self._parts
        if parts is None:
            raise RuntimeStateError("the runtime has no endpoint until it boots")
        return parts.endpoint

    @property
    def run_dir(self) -> Path | None:
        """The private run directory while the runtime is up."""
        parts = self._parts
        return parts.run_dir if parts is not None else None

    @property
    def http_address(self) -> tuple[str, int] | None:
        """The (host, port) the metrics and status page are served on while up (None if not served)."""
        parts = self._parts
        return parts.web.address if parts is not None and parts.web is not None else None

    @property
    def http_url(self) -> str | None:
        """The status page's URL with the token that allows acting on workers (None if not served)."""
        parts = self._parts
        return parts.web.login_url if parts is not None and parts.web is not None else None

    # ---- registration -----------------------------------------------------------------

    def attach_device(self, device: Device) -> None:
        """Register a device; it connects in its own process at boot (or now, if booted)."""
        if not isinstance(device, Device):
            raise RegistrationError(f"attach_device() takes a Device, not {type(device).__name__}")
        self.add_worker(device)

    def register_service(self, service: Service) -> None:
        """Register a service; it starts in its own process at boot (or now, if booted)."""
        if not isinstance(service, Service):
            raise RegistrationError(f"register_service() takes a Service, not {type(service).__name__}")
        self.add_worker(service)

    def add_worker(self, component: Service | Device) -> None:
        """Register a Service or Device: it starts at boot, or now if the runtime is up.

        After boot, all or nothing: a start refused (no fork server, no free slot)
        raises :class:`RegistrationError` and registers nothing. A worker that
        started and then failed stays registered, ``failed`` or in backoff.
        """
        self._add(component, None)

    def register_group(
        self, name: str, members: Sequence[Service | Device], *, strategy: Strategy = "one_for_one"
    ) -> None:
        """Register Services and Devices as a group (before boot): they start in order, stop in reverse.

        ``strategy`` says who restarts when a member dies: ``"one_for_one"`` only it,
        ``"one_for_all"`` the whole group, ``"rest_for_one"`` it and the members after it.
        """
        if self._lc.phase is not Phase.DOWN:
            raise RegistrationError("cannot register a group after boot")
        self._registry.check_group(name, members, strategy)
        for member in members:
            self.add_worker(member)
        self._registry.groups[name] = (strategy, [member.name for member in members])

    def register_process(self, process: Process) -> None:
        """Register a process (before boot); it runs in this process."""
        if not isinstance(process, Process) or isinstance(process, Interface):
            raise RegistrationError(f"register_process() takes a Process, not {type(process).__name__}")
        self._register_receiver(process, "process")

    def register_interface(self, interface: Interface) -> None:
        """Register an interface (before boot); it runs in this process."""
        if not isinstance(interface, Interface):
            raise RegistrationError(f"register_interface() takes an Interface, not {type(interface).__name__}")
        self._register_receiver(interface, "interface")

    def _register_receiver(self, component: Process, what: str) -> None:
        if self._lc.phase is not Phase.DOWN:
            raise RegistrationError(f"cannot register a {what} after boot")
        self._registry.put_receiver(component, what)

    # ---- dispatch ---------------------------------------------------------------------

    def emit(self, message: Message) -> None:
        """Dispatch ``message`` (source ``"runtime"``)."""
        if not isinstance(message, Message):
            self.ctx.emit(message)  # raises the context's TypeError
        self._dispatch.emit(message)

    def _in_handler(self) -> bool:
        return self._dispatch.in_handler()

    def _emit_queued(self, message: Message) -> None:
        """Dispatch ``message`` on the dispatch thread, after everything queued before it (hub thread)."""
        parts = self._parts
        evt = Event(message, self.clock.now_utc(), RUNTIME_SOURCE)
        if parts is None:
            self._dispatch.dispatch(evt)
        else:
            parts.dispatcher.post(lambda: self._dispatch.dispatch(evt))

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
        with self._lc.hold(live=False):
            if self._replaying is not None:
                raise RuntimeStateError("the runtime is replaying a recording")
            if self._lc.phase is not Phase.DOWN:
                return
            self._lc.begin_boot()
            self._booted_since_run = True
            self._dispatch.dispatched = 0
            self.halt_reason = None
            self.failure = None
            self._dispatch.receivers = tuple(
                Receiver(name, comp, self._context(name)) for name, comp in self._registry.receivers()
            )
            try:
                self._parts = self._dispatch.parts = self._assemble()
            except BaseException:
                self._dispatch.receivers = ()
                self._booted_since_run = False
                self._lc.move(Phase.DOWN)
                self._lc.down.set()
                raise
            atexit.register(self._at_exit)
        try:
            self._boot_sequence(self._parts)
        except BaseException as exc:
            # Leave nothing running behind a boot that did not complete.
            pending, requested = self._lc.pending, self._lc.requested
            self._lc.move(Phase.STOPPING)
            self._stop(pending or f"boot failed: {exc!r}")
            if isinstance(exc, BootError) and requested:
                return  # someone asked for the shutdown: that is not a boot failure
            raise

    def _assemble(self) -> Assembly:
        reg = self._registry
        self._order_workers()
        hooks = Hooks(
            emit=self.emit,
            emit_queued=self._emit_queued,
            dispatch_item=self._dispatch.dispatch_item,
            fail=self._fail,
            tap=self._dispatch.tap,
            changed=self._notify,
        )
        parts = assemble(
            name=self.name,
            runtime=self,
            workers=[*reg.devices.values(), *reg.services.values()],
            groups=reg.groups,
            state=self.state,
            clock=self.clock,
            calls=self._calls,
            hooks=hooks,
            waiting=() if self._boot_waiter is None else (self._boot_waiter,),
            http=self.http,
            logs=log_options(self.log_dir, self.log_max_bytes, self.log_backups),
        )
        try:
            self._open_for(parts, list(reg.workers().values()))
        except BaseException:
            parts.close()
            raise
        return parts

    def _start_recorder(self) -> None:
        if not self._recording.enabled:
            return

        def report(error: str) -> None:
            self.emit(m.RuntimeFault(part="recorder", kind="write_failed", error=error))

        try:
            recorder = Recorder(
                self._recording, library=f"bussdcc {self.version}", index=self._record_index, report=report
            )
        except BussdccError as exc:
            raise BootError(str(exc)) from None
        self._dispatch.recorder = recorder

    def _stop_recorder(self) -> None:
        recorder, self._dispatch.recorder = self._dispatch.recorder, None
        if recorder is not None:
            recorder.close()
            self._record_index = recorder.index + 1

    def _boot_sequence(self, parts: Assembly) -> None:
        # After the fork server exists: the recorder's thread is no fork hazard.
        self._start_recorder()
        self.emit(m.RuntimeBooting(version=self.version))
        if parts.fork.threads:
            error = threads_fault(parts.fork.threads)
            self.emit(m.RuntimeFault(part="threads", kind="threads_at_boot", error=error))
        devices = list(self._registry.devices)
        services = [service.name for service in self._registry.services.values() if service.enabled]
        ahead = Ahead([*devices, *services], self._registry.workers())
        sup = parts.supervisor
        parts.hub.call(lambda: ahead.fork(sup))
        for device in devices:
            self._boot_start(parts, device, ahead)
        for rec in self._dispatch.receivers:
            self._dispatch.start_receiver(rec)
        self._lc.announced = True
        self.emit(m.RuntimeBooted(version=self.version))
        for service in services:
            self._boot_start(parts, service, ahead)
        pending = self._lc.end_boot()
        if pending is not None:
            raise BootError(f"boot interrupted: {pending}")

    def shutdown(self, reason: str | None = None) -> None:
        """Stop everything in reverse boot order: graceful, then SIGTERM, then SIGKILL."""
        if (replaying := self._replaying) is not None:
            replaying.cancel(reason)  # a replay ends at its next message
            return
        if self._dispatch.in_handler():
            # Shutdown waits on the hub and on dispatch, which this thread is part of:
            # run it beside, and return at once.
            self._halt(reason or "shutdown requested", requested=True)
            return
        if self._lc.defer_halt(reason or "shutdown requested", True):
            # Boot is under way on another thread: it carries the shutdown out itself.
            self.halt_reason = self.halt_reason  # a request: not a failure
            self._lc.down.wait()
            return
        with self._lc.hold(live=False):
            if self._lc.phase is Phase.DOWN:
                return
            self._lc.move(Phase.STOPPING)
            self._stop(reason)

    def _stop(self, reason: str | None) -> None:
        parts = self._parts
        assert parts is not None
        sup = parts.supervisor
        parts.hub.release_waiters()
        parts.hub.call(sup.close)
        self._settle()
        self.emit(m.RuntimeShuttingDown(reason=reason))
        for name in reversed(self._registry.services):
            self._stop_worker(name)
        for rec in reversed(self._dispatch.receivers):
            self._dispatch.stop_receiver(rec)
        for name in reversed(self._registry.devices):
            self._stop_worker(name)
        if sup.undelivered:
            error = f"{sup.undelivered} events were not delivered to Services that were behind when shutdown began"
            self.emit(m.RuntimeFault(part="outbox", kind="undelivered", error=error))
        self.emit(m.RuntimeShutdown(reason=reason))
        atexit.unregister(self._at_exit)
        self._last_stats = self.stats()
        parts.close()
        self._stop_recorder()  # after the last lines of output are in
        self._parts = self._dispatch.parts = None
        self._dispatch.receivers = ()
        self._lc.move(Phase.DOWN)
        self._lc.down.set()
        self._notify()

    def request_shutdown(self, reason: str | None = None) -> None:
        """Begin a shutdown on another thread and return at once (from any thread, handlers too)."""
        if (replaying := self._replaying) is not None:
            replaying.cancel(reason)
            return
        self._halt(reason or "shutdown requested", requested=True)

    def _fail(self, reason: str) -> None:
        """A failure the runtime cannot go on with (a critical worker given up on, the fork server lost)."""
        self.failure = reason
        self._halt(reason)

    def _halt(self, reason: str, requested: bool = False) -> None:
        if not requested:
            self.halt_reason = reason
        # While booting, boot notices it at its next step and shuts down itself (raising for a failure).
        if not self._lc.defer_halt(reason, requested):
            threading.Thread(target=self.shutdown, args=(reason,), name="bussdcc-halt", daemon=True).start()

    def _at_exit(self) -> None:
        self.shutdown("interpreter exit")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the runtime has shut down; return False on timeout."""
        return self._lc.down.wait(timeout)

    def run(self) -> None:
        """Boot (unless booted since the last run), block until shutdown; Ctrl-C shuts down."""
        # A runtime booted and then halted (a signal, a critical failure)
        # before run() is entered is over: run() must not boot it again.
        try:
            if not self._booted_since_run:
                self.boot()
            self._lc.down.wait()
        except KeyboardInterrupt:
            self.shutdown("KeyboardInterrupt")
        finally:
            self._booted_since_run = False

    # ---- replay -----------------------------------------------------------------------

    def replay(
        self,
        *recordings: str | Path,
        speed: float | None = 1.0,
        names: Sequence[str] = (),
    ) -> ReplayReport:
        """Feed recorded messages, in order, to this runtime's Processes and Interfaces; return what was done.

        No worker is started: what workers emitted comes from the recording. Runs on this
        thread until the recordings end or ``shutdown()`` is asked for. ``speed`` scales the
        recorded gaps (``None``: no waiting at all); ``ctx.clock`` shows recorded time either
        way. ``names``: only recorded messages whose name matches one of these globs are fed.
        """
        if not recordings:
            raise ValueError("replay() needs at least one recording")
        rate = validate_speed(speed)
        if isinstance(names, str):
            names = (names,)  # one glob, not its characters
        with self._lc.hold(live=False):
            if self._lc.phase is not Phase.DOWN:
                raise RuntimeStateError("a booted runtime cannot replay: replay runs instead of boot()")
            if self._replaying is not None:
                raise RuntimeStateError("the runtime is replaying a recording already")
            clock = ReplayClock(rate)
            saved = (self.clock, self._dispatch.clock, self.ctx.clock)
            self.clock = self._dispatch.clock = self.ctx.clock = clock
            receivers = tuple(Receiver(name, comp, self._context(name)) for name, comp in self._registry.receivers())
            session = Replay(self._dispatch, receivers, clock, names, self._registry.workers())
            self._replaying = session
        try:
            return session.run(recordings)
        finally:
            self.clock, self._dispatch.clock, self.ctx.clock = saved
            self._replaying = None

    # ---- inspection -----------------------------------------------------------------

    def workers(self) -> list[WorkerStatus]:
        """A status snapshot of every Service and Device worker."""
        parts = self._parts
        # Read without the hub: callable from handlers, never waits on dispatch.
        return parts.supervisor.statuses() if parts is not None else []

    def stats(self) -> RuntimeStats:
        """Counters since the last boot (kept after shutdown)."""
        parts = self._parts
        if parts is None:
            return self._last_stats
        sup, hub = parts.supervisor, parts.hub
        in_flight, parked = sup.calls.counts()
        items, size = sup.outbox_load()
        return RuntimeStats(
            dispatched=self._dispatch.dispatched,
            rejected=sup.rejected + sup.rejected_items,
            lost=sup.lost,
            # The hub thread adds and removes workers meanwhile: copy the table in one C call first.
            restarts={w.name: w.restarts for w in tuple(sup.workers.values())},
            undelivered=sup.undelivered,
            calls_in_flight=in_flight,
            calls_parked=parked,
            late_replies=sup.calls.late,
            emitters_waiting=hub.room_waiters,
            outbox_bytes=weigh(items, size),
            fork_server_pid=parts.fork.pid,
        )


__all__ = ["Runtime", "RuntimeStats"]

"""Supervision: start, watch, stop and respawn worker processes (hub thread only)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable

from ..errors import BussdccError, ProtocolError, RegistrationError
from ..kernel import ClockProtocol, Device, Message, Service, SlotTable, StateStore
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._forkserver import ForkServer
from ._hub import Hub
from ._workers import Incarnation, Worker, WorkerState, WorkerStatus

#: How long a dead worker's last frames may take to arrive before they count as lost.
DRAIN_GRACE = 0.5


def _describe_exit(code: int | None) -> tuple[str, str | None]:
    if code is None:
        return "never started", None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}", name
    return f"exit code {code}", None


class Supervisor:
    """The hub's client: turns frames and fork-server reports into worker state and messages."""

    def __init__(
        self,
        *,
        fork: ForkServer,
        slots: SlotTable,
        state: StateStore,
        clock: ClockProtocol,
        emit: Callable[[Message], None],
        dispatch_item: Callable[[p.Envelope, bytes, str], None],
        halt: Callable[[str], None],
    ) -> None:
        self.fork = fork
        self.slots = slots
        self.state = state
        self.clock = clock
        self.emit = emit
        self.dispatch_item = dispatch_item
        self.halt = halt
        self.hub: Hub | None = None
        self.workers: dict[str, Worker] = {}
        self.outbox: deque[bytes] = deque()
        self.outbox_bytes = 0
        self._outbox_lock = threading.Lock()
        self.targets: dict[bytes, Worker] = {}
        self._by_identity: dict[bytes, tuple[Worker, Incarnation]] = {}
        self._by_pid: dict[int, tuple[Worker, Incarnation]] = {}
        self._free_slots = list(range(slots.size - 1, -1, -1))
        self.rejected = 0
        self.lost = 0
        self.fatal: str | None = None

    # ---- registry -----------------------------------------------------------------

    def add(self, component: Service | Device, *, pickled: bytes | None = None) -> Worker:
        """Know a component: in the fork server's memory, or (registered after boot) ``pickled``."""
        if component.name in self.workers:
            raise RegistrationError(f"a worker named {component.name!r} exists already")
        worker = Worker(component, forked=pickled is None)
        worker.pickled = pickled
        self.workers[worker.name] = worker
        return worker

    def statuses(self) -> list[WorkerStatus]:
        return [w.status() for w in self.workers.values()]

    # ---- starting -----------------------------------------------------------------

    def start(self, name: str) -> Incarnation:
        """Start a new incarnation of ``name`` (hub thread)."""
        worker = self.workers[name]
        worker.stop_requested = False
        worker.done.clear()
        return self._spawn(worker)

    def _spawn(self, worker: Worker) -> Incarnation:
        assert self.hub is not None
        if self.fatal is not None:
            raise BussdccError(f"cannot start workers: {self.fatal}")
        if not self._free_slots:
            raise BussdccError("no free worker slot (too many live workers)")
        slot = self._free_slots.pop()
        self.slots.reset(slot)
        worker.incarnations += 1
        inc = Incarnation(worker.incarnations, f"{worker.name}#{worker.incarnations}".encode(), slot)
        worker.current = inc
        worker.state = WorkerState.STARTING
        self._by_identity[inc.identity] = (worker, inc)
        self.fork.spawn(worker.name, inc.number, slot, worker.pickled)
        timeout = worker.component.start_timeout
        inc.timers.append(self.hub.call_later(timeout, lambda: self._start_timed_out(worker, inc)))
        return inc

    def _start_timed_out(self, worker: Worker, inc: Incarnation) -> None:
        if not inc.ready and not inc.exited:
            inc.timed_out = True
            self._signal(inc, signal.SIGKILL)

    # ---- stopping -----------------------------------------------------------------

    def stop(self, name: str) -> Worker:
        """Stop ``name`` gracefully, escalating to SIGTERM then SIGKILL (hub thread)."""
        assert self.hub is not None
        worker = self.workers[name]
        worker.stop_requested = True
        inc = worker.current
        if worker.backoff_timer is not None:
            worker.backoff_timer.cancel()
            worker.backoff_timer = None
        if inc is None or inc.exited:
            if worker.state in (WorkerState.BACKOFF, WorkerState.STARTING):
                worker.state = WorkerState.STOPPED
            worker.done.set()
            return worker
        worker.state = WorkerState.STOPPING
        self._send_stop(worker, inc)
        comp = worker.component

        def term() -> None:
            if not inc.exited:
                self._signal(inc, signal.SIGTERM)
                inc.timers.append(self.hub.call_later(comp.kill_timeout, kill))  # type: ignore[union-attr]

        def kill() -> None:
            if not inc.exited:
                self._signal(inc, signal.SIGKILL)

        inc.timers.append(self.hub.call_later(comp.stop_timeout, term))
        return worker

    def _send_stop(self, worker: Worker, inc: Incarnation) -> None:
        # A worker that has not said hello is not routable yet; it gets Stop on hello.
        if inc.hello and self.hub is not None:
            self.hub.send(inc.identity, p.encode(p.Stop()))

    def _signal(self, inc: Incarnation, sig: signal.Signals) -> None:
        if inc.pid is None or inc.exited:
            return
        try:
            os.killpg(inc.pid, sig)  # the worker leads its own process group
        except (ProcessLookupError, PermissionError):
            pass

    # ---- frames from workers --------------------------------------------------------

    def on_fatal(self, reason: str) -> None:
        # Without the fork server every worker died with it (their death signal)
        # and nobody will report it: close their books now, respawn nothing.
        self.fatal = reason
        for worker in self.workers.values():
            worker.stop_requested = True
        for worker, inc in list(self._by_identity.values()):
            inc.exited = True
            inc.exit_code = -signal.SIGKILL
            self._finalize(worker, inc)
        self.halt(reason)

    def stalled_for(self, identity: bytes, since: float) -> float:
        """Seconds a congested worker has handled no event (its heartbeat in shared memory)."""
        entry = self._by_identity.get(identity)
        if entry is None:
            return 0.0
        worker, inc = entry
        last = max(since, self.slots.heartbeat(inc.slot))
        idle = time.monotonic() - last
        return idle if idle > worker.component.event_timeout else 0.0

    def on_stalled(self, identity: bytes, seconds: float) -> None:
        entry = self._by_identity.get(identity)
        if entry is None:
            return
        _, inc = entry
        self.targets.pop(identity, None)
        inc.hung = f"hung: took no events for {seconds:.1f}s"
        self._signal(inc, signal.SIGKILL)

    def on_stranger(self) -> None:
        self.rejected += 1

    def on_frame(self, identity: bytes, data: bytes) -> None:
        entry = self._by_identity.get(identity)
        if entry is None:
            self.rejected += 1
            return
        worker, inc = entry
        try:
            frame = p.decode_worker_frame(data)
        except ProtocolError as exc:
            self._reject(worker, exc)
            return
        match frame:
            case p.Batch():
                self._on_batch(worker, inc, frame)
            case p.Hello():
                inc.controls += 1
                inc.hello = True
                if inc.pid is None:  # the fork server's report may come after the worker's own word
                    inc.pid = frame.pid
                    self._by_pid[frame.pid] = (worker, inc)
                if worker.wants_events and not worker.stop_requested:
                    self.targets[identity] = worker
                if worker.stop_requested and worker.current is inc:
                    self._send_stop(worker, inc)
            case p.Ready():
                inc.controls += 1
                self._on_ready(worker, inc)
            case p.StartFailed():
                inc.controls += 1
                inc.start_failed = frame
            case p.Bye():
                inc.controls += 1
                inc.bye = frame
                self._skip_to(worker, inc, frame.last_seq + 1)
                self.targets.pop(identity, None)
                assert self.hub is not None
                self.hub.send(identity, p.encode(p.ByeAck()))
        if inc.exited and not inc.finalized:
            self._maybe_finalize(worker, inc)

    def _reject(self, worker: Worker, exc: Exception) -> None:
        self.rejected += 1
        self.emit(m.FrameRejected(worker=worker.name, error=f"{type(exc).__name__}: {exc}"))

    def _on_batch(self, worker: Worker, inc: Incarnation, frame: p.Batch) -> None:
        if frame.first_seq < inc.next_seq:
            self._reject(worker, ProtocolError(f"items from {frame.first_seq} were sent already"))
            return
        self._skip_to(worker, inc, frame.first_seq)
        for raw in frame.items:
            inc.next_seq += 1
            inc.received += 1
            try:
                item = p.decode_item(raw)
                match item:
                    case p.Envelope():
                        self.dispatch_item(item, bytes(raw), worker.name)
                    case p.StateSet():
                        self.state.set(item.path, p.decode_value(item.value))
                    case p.StateDelete():
                        self.state.delete(item.path)
            except (ProtocolError, ValueError) as exc:
                self._reject(worker, exc)

    def _skip_to(self, worker: Worker, inc: Incarnation, seq: int) -> None:
        # Items that never arrived are not "received": they count as lost.
        if seq > inc.next_seq:
            missing = seq - inc.next_seq
            self._reject(worker, ProtocolError(f"{missing} items never arrived (from {inc.next_seq})"))
            inc.next_seq = seq

    def _on_ready(self, worker: Worker, inc: Incarnation) -> None:
        inc.ready = True
        if worker.current is not inc:
            return
        if worker.state is WorkerState.STARTING:
            worker.state = WorkerState.RUNNING
        worker.started_at = self.clock.now_utc()
        assert inc.pid is not None  # known from Hello at the latest
        self.emit(m.WorkerStarted(worker=worker.name, role=worker.role, pid=inc.pid, incarnation=inc.number))
        if isinstance(worker.component, Device):
            self.emit(m.DeviceAttached(device=worker.name, kind=worker.kind))
        else:
            self.emit(m.ServiceStarted(service=worker.name))
        inc.outcome.set()

    # ---- fork server reports ---------------------------------------------------------

    def on_fork_readable(self) -> None:
        for report in self.fork.reports():
            match report:
                case p.Spawned():
                    entry = self._by_identity.get(f"{report.worker}#{report.incarnation}".encode())
                    if entry is not None:
                        entry[1].pid = report.pid
                        self._by_pid[report.pid] = entry
                case p.SpawnFailed():
                    entry = self._by_identity.get(f"{report.worker}#{report.incarnation}".encode())
                    if entry is not None:
                        entry[1].spawn_error = report.error
                        entry[1].exited = True
                        self._finalize(*entry)
                case p.Reaped():
                    entry = self._by_pid.pop(report.pid, None)
                    if entry is not None:
                        entry[1].exit_code = report.exit_code
                        entry[1].exited = True
                        self.targets.pop(entry[1].identity, None)
                        self._maybe_finalize(*entry)

    def _maybe_finalize(self, worker: Worker, inc: Incarnation) -> None:
        items, controls = self.slots.read(inc.slot)
        if inc.next_seq > items and inc.controls >= controls:
            self._finalize(worker, inc)
        elif not inc.draining:
            assert self.hub is not None
            inc.draining = True
            inc.timers.append(self.hub.call_later(DRAIN_GRACE, lambda: self._finalize(worker, inc)))

    def _finalize(self, worker: Worker, inc: Incarnation) -> None:
        if inc.finalized:
            return
        inc.finalized = True
        inc.cancel_timers()
        emitted, _ = self.slots.read(inc.slot)
        lost = max(0, emitted - inc.received)
        self.lost += lost
        self._by_identity.pop(inc.identity, None)
        self.targets.pop(inc.identity, None)
        if self.hub is not None:
            self.hub.forget(inc.identity)
        self._free_slots.append(inc.slot)
        reason, signame = _describe_exit(inc.exit_code)
        graceful = inc.bye is not None
        if inc.spawn_error:
            reason = f"spawn failed: {inc.spawn_error}"
        elif inc.timed_out:
            reason = f"start timeout ({reason})"
        elif inc.hung:
            reason = f"{inc.hung} ({reason})"
        self.emit(
            m.WorkerExited(
                worker=worker.name,
                role=worker.role,
                pid=inc.pid or 0,
                incarnation=inc.number,
                reason=reason,
                exit_code=inc.exit_code if inc.exit_code is not None and inc.exit_code >= 0 else None,
                signal=signame,
                abnormal=not graceful,
                emitted=emitted,
                dispatched=inc.received,
                lost=lost,
            )
        )
        worker.last_exit = reason if not graceful else "stopped"
        inc.outcome.set()
        if worker.current is not inc:
            return
        if graceful and inc.bye is not None and inc.bye.error is None:
            self._stopped(worker)
        elif graceful and inc.bye is not None:
            worker.last_exit = f"gave up: {inc.bye.error}"
            self._stopped(worker, announce=True)
            self._give_up(worker, inc.bye.error or "", inc.bye.traceback, restartable=False)
        elif worker.stop_requested:
            self._stopped(worker)
        elif inc.spawn_error:
            error = (
                f"the fork server could not create {worker.name!r}: {inc.spawn_error} "
                "(a component registered after boot must be picklable and its class importable)"
            )
            self._announce_failure(worker, error, None)
            self._give_up(worker, error, None, restartable=False)
        else:
            error = inc.start_failed.error if inc.start_failed else f"worker process {inc.pid} {reason}"
            if lost:
                error += f" ({lost} messages lost)"
            tb = inc.start_failed.traceback if inc.start_failed else None
            self._announce_failure(worker, error, tb)
            self._give_up(worker, error, tb, restartable=True)

    def _announce_failure(self, worker: Worker, error: str, tb: str | None) -> None:
        if isinstance(worker.component, Service):
            self.emit(m.ServiceError(service=worker.name, error=error, traceback=tb))
        else:
            self.emit(m.DeviceFailed(device=worker.name, kind=worker.kind, error=error, traceback=tb))

    def _stopped(self, worker: Worker, announce: bool = True) -> None:
        worker.state = WorkerState.STOPPED
        worker.current = None
        if announce:
            if isinstance(worker.component, Device):
                self.emit(m.DeviceDetached(device=worker.name, kind=worker.kind))
            else:
                self.emit(m.ServiceStopped(service=worker.name))
        worker.done.set()

    def _give_up(self, worker: Worker, error: str, tb: str | None, *, restartable: bool) -> None:
        if restartable and not worker.stop_requested and self._may_restart(worker):
            assert self.hub is not None
            worker.state = WorkerState.BACKOFF
            delay = self._backoff(worker)
            worker.backoff_timer = self.hub.call_later(delay, lambda: self._respawn(worker))
            return
        worker.state = WorkerState.FAILED
        worker.current = None
        if isinstance(worker.component, Service):
            self.emit(m.ServiceFailure(service=worker.name, error=error, traceback=tb))
        worker.done.set()
        if worker.component.critical:
            self.halt(f"critical {worker.role} {worker.name!r} failed: {error}")

    def _may_restart(self, worker: Worker) -> bool:
        comp = worker.component
        if not comp.restart:
            return False
        now = time.monotonic()
        while worker.restart_times and now - worker.restart_times[0] > comp.restart_window:
            worker.restart_times.popleft()
        return len(worker.restart_times) < comp.max_restarts

    def _backoff(self, worker: Worker) -> float:
        recent = len(worker.restart_times)
        comp = worker.component
        return 0.0 if recent == 0 else min(comp.backoff_max, comp.backoff_initial * 2 ** (recent - 1))

    def _respawn(self, worker: Worker) -> None:
        worker.backoff_timer = None
        if worker.stop_requested:
            worker.state = WorkerState.STOPPED
            worker.done.set()
            return
        worker.restart_times.append(time.monotonic())
        worker.restarts += 1
        if isinstance(worker.component, Service):
            self.emit(m.ServiceRestart(service=worker.name))
        self._spawn(worker)

    # ---- delivery -----------------------------------------------------------------

    def post(self, item: bytes) -> None:
        """Queue an encoded event for the workers that handle events (any thread)."""
        with self._outbox_lock:
            self.outbox.append(item)
            self.outbox_bytes += len(item)

    def drain_outbox(self) -> list[bytes]:
        with self._outbox_lock:
            items = list(self.outbox)
            self.outbox.clear()
            self.outbox_bytes = 0
        return items

    def outbox_load(self) -> tuple[int, int]:
        """Items and bytes waiting in the outbox."""
        return len(self.outbox), self.outbox_bytes

    def delivery_targets(self) -> list[bytes]:
        return list(self.targets)

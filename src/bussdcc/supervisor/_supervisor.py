"""Supervision: start, watch, stop and respawn worker processes (hub thread only)."""

from __future__ import annotations

import functools
import hmac
import os
import random
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Callable

import msgspec

from ..errors import BussdccError, ProtocolError, RegistrationError, UnknownPeer
from ..kernel import ClockProtocol, Device, Message, Service, SlotTable, StateStore, Strategy, restart_policy
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._backoff import backoff_delay
from ._calls import CallRouter
from ._cgroup import oom_counter, oom_kills
from ._dispatcher import Dispatcher
from ._forkserver import ForkServer, threads_hint
from ._groups import Group, Plan
from ._hub import Hub, Periodic, Timer
from ._rundir import RunDirGuard
from ._watchdog import SAMPLE_PERIOD, WATCH_PERIOD, Verdict, hang, over_limit, sample
from ._workers import Incarnation, Worker, WorkerState, WorkerStatus

#: How long a dead worker's last frames may take to arrive before they count as lost.
DRAIN_GRACE = 0.5
#: Frames from no verified worker are reported at once, then at most once per this many seconds.
REFUSAL_PERIOD = 1.0
#: Routing ids of ended incarnations remembered, so that their late frames are not taken for a stranger's.
_RETIRED = 256


class SpawnRefused(BussdccError):
    """No worker process can be started now (nothing was started)."""


class NoForkServer(SpawnRefused):
    """The fork server is gone or cannot be reached."""


class NoFreeSlot(SpawnRefused):
    """Every worker slot is taken by a live worker."""


def _describe_exit(code: int | None) -> tuple[str, str, str | None]:
    """(cause, reason, signal name) of a process exit code."""
    if code is None:
        return "spawn_failed", "never started", None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "signal", f"killed by {name}", name
    return ("exited" if code == 0 else "exit_code"), f"exit code {code}", None


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
        emit_now: Callable[[Message], None],
        dispatch_item: Callable[[p.Envelope, bytes, str], None],
        dispatcher: Dispatcher,
        halt: Callable[[str], None],
    ) -> None:
        self.fork = fork
        self.slots = slots
        self.state = state
        self.clock = clock
        #: Dispatch a message from the hub thread: queued, in order, for the dispatch thread.
        self.emit = emit
        self._emit_now = emit_now
        self.dispatch_item = dispatch_item
        self.dispatcher = dispatcher
        self.halt = halt
        self.hub: Hub | None = None
        #: Shows what workers print (set by the runtime).
        self.on_output: Callable[[p.Output], None] | None = None
        self.workers: dict[str, Worker] = {}
        self.groups: dict[str, Group] = {}
        self.outbox: deque[bytes] = deque()
        self.outbox_bytes = 0
        self._outbox_lock = threading.Lock()
        self.targets: dict[bytes, Worker] = {}
        self._by_identity: dict[bytes, tuple[Worker, Incarnation]] = {}
        self._by_pid: dict[int, tuple[Worker, Incarnation]] = {}
        self._free_slots = list(range(slots.size - 1, -1, -1))
        self._watching: Periodic | None = None
        #: Set when shutdown begins: nothing is respawned after that.
        self.closing = False
        self.rejected = 0
        #: Frames refused because no verified worker sent them (strangers, wrong tokens, before a Hello).
        self.refused = 0
        #: Connections to the workers' endpoint refused at the handshake (wrong credentials).
        self.denied = 0
        self._refusals_held = 0
        self._refusal_timer: Timer | None = None
        #: Incarnations the fork server has yet to report on, by (worker, incarnation number).
        self._spawning: dict[tuple[str, int], tuple[Worker, Incarnation]] = {}
        self._retired: dict[bytes, None] = {}
        #: Items that failed to decode or apply (counted on the dispatch thread).
        self.rejected_items = 0
        #: Lines of worker output not shown because dispatch was far behind.
        self.output_dropped = 0
        self.lost = 0
        #: Events dropped for the Services once shutdown had begun with the outbox full.
        self.undelivered = 0
        self.fatal: str | None = None
        #: Watches the run directory (set by the runtime).
        self.run_dir_guard: RunDirGuard | None = None
        #: Calls to devices: routed here, answered by the device incarnations.
        self.calls = CallRouter(self.workers)

    # ---- registry -----------------------------------------------------------------

    def add(
        self, component: Service | Device, *, pickled: bytes | None = None, argv: list[str] | None = None
    ) -> Worker:
        """Know a component: in the fork server's memory, ``pickled``, or run by exec'ing ``argv``."""
        if component.name in self.workers:
            raise RegistrationError(f"a worker named {component.name!r} exists already")
        worker = Worker(component, forked=pickled is None and argv is None)
        worker.pickled = pickled
        worker.argv = argv
        self.workers[worker.name] = worker
        return worker

    def remove(self, name: str) -> None:
        """Forget a worker that is stopped or failed (hub thread)."""
        worker = self.workers[name]
        if worker.current is not None or worker.backoff_timer is not None or worker.group is not None:
            raise RegistrationError(f"worker {name!r} is {worker.state} or in a group: it cannot be removed")
        del self.workers[name]

    def add_group(self, name: str, strategy: Strategy, members: list[str]) -> None:
        """Tie known workers into a group with a restart strategy."""
        self.groups[name] = Group(name, strategy, members)
        for member in members:
            self.workers[member].group = name

    def statuses(self) -> list[WorkerStatus]:
        """A snapshot, from any thread: it copies what the hub thread changes (in one C call each)."""
        now = time.monotonic()
        out = []
        for w in tuple(self.workers.values()):
            window = w.component.restart_window
            out.append(w.status(now, sum(1 for t in tuple(w.restart_times) if now - t <= window)))
        return out

    # ---- starting -----------------------------------------------------------------

    def start(self, name: str) -> Incarnation:
        """Start a new incarnation of ``name`` (hub thread)."""
        worker = self.workers[name]
        worker.stop_requested = False
        worker.held = False
        worker.done.clear()
        try:
            return self._spawn(worker)
        except BaseException:
            worker.done.set()  # refused: it stays as it was, stopped or failed
            raise

    def _spawn(self, worker: Worker) -> Incarnation:
        assert self.hub is not None
        if self.fatal is not None:
            raise NoForkServer(f"cannot start workers: {self.fatal}")
        if not self._free_slots:
            raise NoFreeSlot("no free worker slot (too many live workers)")
        if worker.argv is not None:
            self._check_slots_file()
        prior = worker.state
        inc = self._new_incarnation(worker)
        self._spawning[worker.name, inc.number] = (worker, inc)
        try:
            self.fork.spawn(
                worker.name, inc.number, inc.slot, worker.pickled, worker.argv, identity=inc.identity, token=inc.token
            )
        except BaseException as exc:
            # Nothing was started: no identity or slot stays taken for it, whatever went wrong.
            del self._by_identity[inc.identity]
            del self._spawning[worker.name, inc.number]
            self._free_slots.append(inc.slot)
            worker.current = None
            worker.state = prior  # not `starting`: no process is on its way
            if isinstance(exc, OSError):
                raise NoForkServer(f"cannot reach the fork server: {exc}") from exc
            raise
        timeout = worker.component.start_timeout
        inc.timers.append(self.hub.call_later(timeout, lambda: self._start_timed_out(worker, inc)))
        self._watch_soon()
        return inc

    def _new_incarnation(self, worker: Worker) -> Incarnation:
        """The next incarnation of ``worker``, with a fresh slot, routing id and secret (hub thread)."""
        slot = self._free_slots.pop()
        self.slots.reset(slot)
        worker.incarnations += 1
        # Random, so that nobody can claim an incarnation's routing id before it connects
        # (a ROUTER ignores a second peer with a taken id), and the secret proves the Hello.
        inc = Incarnation(worker.incarnations, secrets.token_hex(16).encode(), slot)
        inc.token = secrets.token_bytes(32)
        inc.refused_at = self.refused
        inc.denied_at = self.denied
        worker.current = inc
        worker.state = WorkerState.STARTING
        self._by_identity[inc.identity] = (worker, inc)
        return inc

    def _check_slots_file(self) -> None:
        """Refuse a worker that would open the slots file by path, once that file is lost."""
        guard = self.run_dir_guard
        if guard is not None and guard.slots_lost:
            # It would make a slots file of its own, which we never read: its counters and
            # heartbeats unseen, it would be killed as hung over and over.
            raise SpawnRefused(
                f"the run directory {guard.path} was deleted under the runtime and its slots file cannot be "
                "restored: a worker started by exec cannot join until the runtime restarts"
            )

    def _start_timed_out(self, worker: Worker, inc: Incarnation) -> None:
        if inc.ready or inc.exited:
            return
        limit = worker.component.start_timeout
        if inc.pid is None:
            # No process was ever reported (a fork server stopped or far behind): there is nothing
            # to kill, so it ends now rather than stay `starting` with no pid; a late one is killed.
            inc.cause = "start_timeout"
            inc.detail = f"start timeout: the fork server reported no process within {limit:g}s"
            inc.exited = True
            self._finalize(worker, inc)
            return
        if worker.role == "device" and self.slots.activity(inc.slot)[0] == "start":
            verdict = Verdict("hung", f"hung: connect ran longer than start_timeout {limit:g}s")
        elif not inc.hello and self.slots.read(inc.slot)[1] == 0:
            # Not even sent (its own count in shared memory says so): it never got as far as its socket.
            verdict = Verdict("start_timeout", f"start timeout: the worker never said hello within {limit:g}s")
            elsewhere = self.refused - inc.refused_at - inc.wrong_tokens - inc.unverified
            seen = [
                f"{n} {one if n == 1 else many}"
                for n, one, many in (
                    (
                        inc.denied,
                        "connection with its routing id but a wrong token",
                        "connections with its routing id but a wrong token",
                    ),
                    (
                        self.denied - inc.denied_at - inc.denied,
                        "connection with wrong credentials",
                        "connections with wrong credentials",
                    ),
                    (elsewhere, "frame from an unknown peer", "frames from unknown peers"),
                    (inc.wrong_tokens, "hello with a wrong token", "hellos with a wrong token"),
                    (inc.unverified, "frame before a verified hello", "frames before a verified hello"),
                )
                if n
            ]
            if seen:
                verdict = Verdict(verdict.cause, f"{verdict.reason}; {', '.join(seen)} were rejected meanwhile")
        else:
            verdict = Verdict("start_timeout", f"start timeout: not ready within {limit:g}s")
        if worker.argv is None and not inc.external:  # forked from the fork server
            verdict = Verdict(verdict.cause, verdict.reason + threads_hint(self.fork.threads))
        guard = self.run_dir_guard
        if self.hub is not None and not self.hub.accepting:
            hint = (
                " (the parent is short of file descriptors: the workers' endpoint is closed to new "
                "connections until fewer are open; see runtime.fault part fds)"
            )
            verdict = Verdict(verdict.cause, verdict.reason + hint)
        elif guard is not None and guard.missing():
            hint = f" (the run directory {guard.path} is gone, deleted under the live runtime: workers cannot connect)"
            verdict = Verdict(verdict.cause, verdict.reason + hint)
        self._kill(worker, inc, verdict)

    # ---- watching -----------------------------------------------------------------

    def _watch_soon(self) -> None:
        assert self.hub is not None
        if self._watching is None or self._watching.done:
            self._watching = self.hub.every(WATCH_PERIOD, self._watch, "watchdog")

    def _watch(self) -> bool:
        """Look at every live worker once; False once there is none (a spawn starts it again)."""
        now = time.monotonic()
        live = False
        failed: Exception | None = None
        for worker, inc in list(self._by_identity.values()):
            if inc.exited or inc.pid is None:
                continue
            live = True
            if inc.cause is not None or not inc.ready or inc.stop_sent:
                continue
            comp = worker.component
            verdict = hang(comp, inc, self.slots, now)
            if verdict is None and now - inc.usage.sampled_at >= SAMPLE_PERIOD:
                try:
                    sample(inc.usage, inc.pid, now, comp.cpu_window)
                except Exception as exc:  # e.g. EMFILE at the fd limit: hangs of the others are still judged
                    failed = failed or exc
                else:
                    verdict = over_limit(comp, inc.usage, now)
            if verdict is not None:
                self._kill(worker, inc, verdict)
        if failed is not None:
            raise failed  # reported once by the hub; the watch goes on next period
        return live or bool(self._by_identity)

    def _kill(self, worker: Worker, inc: Incarnation, verdict: Verdict) -> None:
        """Kill an incarnation for ``verdict``; its exit is reported with that cause."""
        if inc.cause is not None or inc.exited:
            return
        inc.cause, inc.detail = verdict.cause, verdict.reason
        pid = inc.pid or 0
        if verdict.cause == "hung":
            self.emit(m.WorkerHung(worker.name, worker.role, pid, inc.number, verdict.reason))
        elif verdict.limit:
            self.emit(
                m.WorkerLimitExceeded(
                    worker.name,
                    worker.role,
                    pid,
                    inc.number,
                    verdict.limit,
                    verdict.value,
                    verdict.maximum,
                    verdict.reason,
                )
            )
        self.targets.pop(inc.identity, None)
        self._signal(inc, signal.SIGKILL)

    # ---- stopping -----------------------------------------------------------------

    def stop(self, name: str) -> Worker:
        """Stop ``name`` gracefully, escalating to SIGTERM then SIGKILL (hub thread)."""
        worker = self.workers[name]
        worker.stop_requested = True
        worker.held = False  # a stop ends it for good, whatever its group had planned
        if worker.group is not None and (plan := self.groups[worker.group].plan) is not None:
            plan.drop(name)  # the rest of the group restart goes on without it
        if worker.backoff_timer is not None:
            worker.backoff_timer.cancel()
            worker.backoff_timer = None
        inc = worker.current
        if inc is None or inc.exited:
            if worker.state in (WorkerState.BACKOFF, WorkerState.STARTING):
                worker.state = WorkerState.STOPPED
            self.calls.down(worker)
            worker.done.set()
            return worker
        self._begin_stop(worker, inc)
        return worker

    def close(self) -> None:
        """Shutdown has begun: respawn nothing more, and let waiting workers count as stopped."""
        self.closing = True
        for group in self.groups.values():
            if group.plan is not None:
                group.plan.cancel()
        for worker in self.workers.values():
            if worker.backoff_timer is not None:
                worker.backoff_timer.cancel()
                worker.backoff_timer = None
            if worker.state is WorkerState.BACKOFF and worker.current is None:
                self._settle_stopped(worker)

    def hold(self, worker: Worker) -> None:
        """Stop a group member for its group's restart (its exit is not a failure)."""
        worker.held = True
        inc = worker.current
        if inc is not None and not inc.exited:
            self._begin_stop(worker, inc)

    def _begin_stop(self, worker: Worker, inc: Incarnation) -> None:
        assert self.hub is not None
        hub = self.hub
        worker.state = WorkerState.STOPPING
        self._send_stop(worker, inc)
        comp = worker.component

        def term() -> None:
            if not inc.exited:
                if self.slots.activity(inc.slot)[0] == "stop" and inc.cause is None:
                    inc.cause = "hung"
                    inc.detail = f"hung: stop/disconnect ran longer than stop_timeout {comp.stop_timeout:g}s"
                self._signal(inc, signal.SIGTERM)
                inc.timers.append(hub.call_later(comp.kill_timeout, kill))

        def kill() -> None:
            if not inc.exited:
                self._signal(inc, signal.SIGKILL)

        inc.timers.append(hub.call_later(comp.stop_timeout, term))

    def _send_stop(self, worker: Worker, inc: Incarnation) -> None:
        inc.stop_sent = True
        # A worker that has not said hello is not routable yet; it gets Stop on hello.
        if inc.hello and self.hub is not None:
            self.hub.send(inc.identity, p.encode(p.Stop()))

    def _signal(self, inc: Incarnation, sig: signal.Signals) -> None:
        if inc.pid is None or inc.exited:
            return
        try:
            if inc.external:
                os.kill(inc.pid, sig)  # its process group is its launcher's business
            else:
                os.killpg(inc.pid, sig)  # the worker leads its own process group
        except (ProcessLookupError, PermissionError):
            pass

    # ---- frames from workers --------------------------------------------------------

    def on_fatal(self, reason: str) -> None:
        # Without the fork server every worker died with it (their death signal)
        # and nobody will report it: close their books now, respawn nothing.
        self.fatal = reason
        self.close()
        for worker in self.workers.values():
            worker.stop_requested = True
            worker.held = False
        for worker, inc in list(self._by_identity.values()):
            # Their helpers were not: the group outlives its leader while members remain.
            if inc.pid is not None:
                try:
                    os.killpg(inc.pid, signal.SIGKILL)
                except OSError:
                    pass
            inc.exited = True
            inc.exit_code = -signal.SIGKILL
            self._finalize(worker, inc)
        self.halt(reason)

    def on_fault(self, part: str, kind: str, error: str) -> None:
        """A fault of the hub's own machinery, which carries on: say so (once; the hub dedupes)."""
        self.emit(m.RuntimeFault(part, kind, error))

    def stalled_for(self, identity: bytes, since: float) -> float:
        """Seconds a congested worker has handled no event (its heartbeat in shared memory)."""
        entry = self._by_identity.get(identity)
        if entry is None:
            return 0.0
        worker, inc = entry
        last = max(since, self.slots.progress(inc.slot))
        idle = time.monotonic() - last
        return idle if idle > worker.component.event_timeout else 0.0

    def on_stalled(self, identity: bytes, seconds: float) -> None:
        entry = self._by_identity.get(identity)
        if entry is None:
            return
        worker, inc = entry
        self._kill(worker, inc, Verdict("hung", f"hung: took no events for {seconds:.1f}s"))

    def admit(self, username: bytes, password: bytes) -> bool:
        """Whether a peer may complete its handshake on the workers' endpoint (hub thread, asked by ZAP).

        Only a process that holds a live incarnation's routing id and its token
        may: a stranger cannot keep a connection, hence an fd of the parent.
        """
        entry = self._by_identity.get(username)
        if entry is not None and hmac.compare_digest(password, entry[1].token):
            return True
        self.denied += 1
        if entry is not None:
            entry[1].denied += 1
            self._refuse(entry[0].name, "a connection with its routing id but a wrong token", frame=False)
        else:
            self._refuse("", "a connection with wrong credentials, refused at the handshake", frame=False)
        return False

    def control_denied(self, count: int) -> None:
        """``count`` connections to the control endpoint were refused at the handshake (hub thread)."""
        for _ in range(count):
            self._refuse("", "a control connection without the runtime's secret, refused at the handshake", frame=False)

    def on_stranger(self) -> None:
        self._refuse("", "a message of other than one part from a peer: no worker of ours sends that")

    def on_frame(self, identity: bytes, data: bytes) -> None:
        entry = self._by_identity.get(identity)
        if entry is None:
            if identity in self._retired:
                self.rejected += 1  # ours, too late: already counted as lost when it ended
                return
            self._refuse("", f"a frame from routing id {identity[:40]!r}, which is no worker of this runtime")
            return
        worker, inc = entry
        try:
            frame = p.decode_worker_frame(data)
        except ProtocolError as exc:
            if inc.hello:
                self._reject(worker, exc)
            else:
                inc.unverified += 1
                self._refuse(worker.name, f"an undecodable frame before a verified hello ({exc})")
            return
        if not inc.hello and not self._verified(worker, inc, frame):
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
                    inc.oom = oom_counter(frame.pid)
                if worker.wants_events and not inc.stop_sent:
                    self.targets[identity] = worker
                if inc.stop_sent:
                    self._send_stop(worker, inc)
            case p.Ready():
                inc.controls += 1
                self._on_ready(worker, inc)
            case p.StartFailed():
                inc.controls += 1
                inc.start_failed = frame
            case p.Reply():
                inc.controls += 1
                self.calls.on_reply(inc, frame)
            case p.Request():
                inc.controls += 1
                self.calls.on_request(inc, frame)
            case p.Bye():
                inc.controls += 1
                inc.bye = frame
                self._skip_to(worker, inc, frame.last_seq + 1)
                self.targets.pop(identity, None)
                hub = self.hub
                assert hub is not None
                ack = p.encode(p.ByeAck())
                # Acknowledged once everything before it has been dispatched, not just received.
                self.dispatcher.post(lambda: hub.call_soon(lambda: hub.send(identity, ack)), 0)
        if inc.exited and not inc.finalized:
            self._maybe_finalize(worker, inc)

    def _reject(self, worker: Worker, exc: Exception) -> None:
        self.rejected += 1
        self.emit(m.FrameRejected(worker=worker.name, error=f"{type(exc).__name__}: {exc}"))

    def _verified(self, worker: Worker, inc: Incarnation, frame: p.WorkerFrame) -> bool:
        """Whether the first frame of an incarnation proves it is the process we made (else it is refused)."""
        if not isinstance(frame, p.Hello):
            # Nothing is dispatched, applied, routed or believed before the proof.
            inc.unverified += 1
            self._refuse(worker.name, f"a {type(frame).__name__} frame before a verified hello")
            return False
        if not hmac.compare_digest(frame.token, inc.token):
            inc.wrong_tokens += 1
            self._refuse(worker.name, "a hello with a wrong token")
            return False
        return True

    def _refuse(self, worker: str, error: str, frame: bool = True) -> None:
        """Count a frame no verified worker sent (or a refused connection); report the first, then a summary a period.

        A flood of junk costs a counter increment per frame, never a message each.
        """
        self.rejected += 1
        if frame:
            self.refused += 1
        if self._refusal_timer is not None:
            self._refusals_held += 1
            return
        self.emit(m.FrameRejected(worker=worker, error=f"{UnknownPeer.__name__}: {error}"))
        assert self.hub is not None
        self._refusal_timer = self.hub.call_later(REFUSAL_PERIOD, self._report_refusals)

    def _report_refusals(self) -> None:
        self._refusal_timer = None
        held, self._refusals_held = self._refusals_held, 0
        if not held:
            return
        error = (
            f"{UnknownPeer.__name__}: {held} more frames from unknown peers or before a verified hello, "
            f"or connections refused at the handshake, rejected within {REFUSAL_PERIOD:g}s"
        )
        self.emit(m.FrameRejected(worker="", error=error, count=held))
        assert self.hub is not None
        self._refusal_timer = self.hub.call_later(REFUSAL_PERIOD, self._report_refusals)

    def _on_batch(self, worker: Worker, inc: Incarnation, frame: p.Batch) -> None:
        if frame.first_seq < inc.next_seq:
            self._reject(worker, ProtocolError(f"items from {frame.first_seq} were sent already"))
            return
        self._skip_to(worker, inc, frame.first_seq)
        items = frame.items
        inc.next_seq += len(items)
        inc.received += len(items)
        name = worker.name
        self.dispatcher.post(lambda: self._apply(name, items), len(items), sum(len(raw) for raw in items))

    def takes_events(self, identity: bytes) -> bool:
        """Whether the worker ``identity`` is sent dispatched events (only those can congest the hub)."""
        return identity in self.targets

    def backlogged(self) -> bool:
        """Whether dispatch is so far behind that the hub should stop reading (back-pressure)."""
        return self.dispatcher.full()

    def _apply(self, worker: str, items: list[msgspec.Raw]) -> None:
        """Dispatch a worker's messages and apply its state writes, in order (dispatch thread)."""
        for raw in items:
            try:
                item = p.decode_item(raw)
                match item:
                    case p.Envelope():
                        self.dispatch_item(item, bytes(raw), worker)
                    case p.StateSet():
                        self.state.set(item.path, p.decode_value(item.value))
                    case p.StateDelete():
                        self.state.delete(item.path)
            except BaseException as exc:  # a bad item, or a handler that raised SystemExit: the rest still goes
                self.rejected_items += 1
                self._emit_now(m.FrameRejected(worker=worker, error=f"{type(exc).__name__}: {exc}"))

    def _skip_to(self, worker: Worker, inc: Incarnation, seq: int) -> None:
        # Items that never arrived are not "received": they count as lost.
        if seq > inc.next_seq:
            missing = seq - inc.next_seq
            self._reject(worker, ProtocolError(f"{missing} items never arrived (from {inc.next_seq})"))
            inc.next_seq = seq

    def _on_ready(self, worker: Worker, inc: Incarnation) -> None:
        inc.ready = True
        inc.ready_at = time.monotonic()
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
        inc.ticket = self.dispatcher.posted
        inc.outcome.set()
        self.calls.ready(worker, inc)
        self._advance_group(worker)

    # ---- fork server reports ---------------------------------------------------------

    def on_fork_readable(self) -> None:
        for report in self.fork.reports():
            match report:
                case p.Spawned():
                    entry = self._spawning.pop((report.worker, report.incarnation), None)
                    if entry is not None:
                        entry[1].pid = report.pid
                        self._by_pid[report.pid] = entry
                        entry[1].oom = oom_counter(report.pid)
                    else:  # an incarnation already ended without it (its start timed out): not wanted
                        try:
                            os.killpg(report.pid, signal.SIGKILL)
                        except OSError:
                            pass
                case p.SpawnFailed():
                    entry = self._spawning.pop((report.worker, report.incarnation), None)
                    if entry is not None:
                        entry[1].spawn_error = report.error
                        entry[1].spawn_errno = report.errno
                        entry[1].exited = True
                        self._finalize(*entry)
                case p.Reaped():
                    self.on_exit(report.pid, report.exit_code)
                case p.Output():
                    show = self.on_output
                    if show is None:
                        continue
                    if self.dispatcher.full():
                        # Memory stays bounded: what cannot be shown now is counted, not queued.
                        self.output_dropped += len(report.lines)
                        continue
                    if self.output_dropped:
                        dropped = p.Output(
                            report.worker,
                            report.pid,
                            2,
                            [f"({self.output_dropped} lines of worker output dropped: the parent was behind)"],
                        )
                        self.output_dropped = 0
                        self.dispatcher.post(functools.partial(show, dropped), 1, 0)
                    # Shown from the dispatch thread: a blocked stdout never stops the hub.
                    size = sum(len(line) for line in report.lines)
                    self.dispatcher.post(functools.partial(show, report), 1, size)

    def on_exit(self, pid: int, exit_code: int | None) -> None:
        """Process ``pid`` ended (``exit_code`` None: not our child, so its status is unknown)."""
        entry = self._by_pid.pop(pid, None)
        if entry is not None:
            entry[1].exit_code = exit_code
            oom = entry[1].oom
            if exit_code == -signal.SIGKILL and oom is not None:
                # Read now, once: SIGKILL is also what the OOM killer sends.
                count = oom_kills(oom[0])
                entry[1].oom_killed = count is not None and count > oom[1]
            entry[1].exited = True
            self.targets.pop(entry[1].identity, None)
            self._calls_end_early(entry[1])
            self._maybe_finalize(*entry)

    def join(self, name: str, pid: int) -> Incarnation:
        """Adopt process ``pid``, started outside the fork server, as the next incarnation of ``name``."""
        assert self.hub is not None
        worker = self.workers[name]
        if worker.current is not None:
            raise RegistrationError(f"worker {name!r} is {worker.state} already")
        if not self._free_slots:
            raise NoFreeSlot("no free worker slot (too many live workers)")
        self._check_slots_file()
        worker.stop_requested = False
        worker.held = False
        worker.done.clear()
        inc = self._new_incarnation(worker)
        inc.pid = pid
        inc.external = True
        self._by_pid[pid] = (worker, inc)
        timeout = worker.component.start_timeout
        inc.timers.append(self.hub.call_later(timeout, lambda: self._start_timed_out(worker, inc)))
        self._watch_soon()
        return inc

    def _calls_end_early(self, inc: Incarnation) -> None:
        # Fail its calls at once, unless a reply may still be on its way (a control
        # frame counted in shared memory but not received): then at finalize.
        if inc.controls >= self.slots.read(inc.slot)[1]:
            self.calls.ended(inc, self._classify(inc)[1], crashed=inc.bye is None)

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
        self._spawning.pop((worker.name, inc.number), None)
        if inc.hello:
            self._retired[inc.identity] = None
            if len(self._retired) > _RETIRED:
                del self._retired[next(iter(self._retired))]
        self.targets.pop(inc.identity, None)
        if self.hub is not None:
            self.hub.forget(inc.identity)
        self._free_slots.append(inc.slot)
        cause, reason, signame = self._classify(inc)
        abnormal = cause not in ("stopped", "exited")
        self.calls.ended(inc, reason, crashed=inc.bye is None)
        self.emit(
            m.WorkerExited(
                worker=worker.name,
                role=worker.role,
                pid=inc.pid or 0,
                incarnation=inc.number,
                reason=reason,
                exit_code=inc.exit_code if inc.exit_code is not None and inc.exit_code >= 0 else None,
                signal=signame,
                abnormal=abnormal,
                emitted=emitted,
                dispatched=inc.received,
                lost=lost,
                cause=cause,
            )
        )
        worker.last_exit = reason
        if worker.current is inc:
            worker.current = None
            if inc.ready_at is not None and time.monotonic() - inc.ready_at >= worker.component.backoff_reset:
                worker.streak = 0  # it ran long enough to count as healthy
            self._decide(worker, inc, cause, reason, lost)
        # Last: whoever waits on the outcome (boot) sees the decision made, too.
        inc.ticket = self.dispatcher.posted
        inc.outcome.set()

    def _classify(self, inc: Incarnation) -> tuple[str, str, str | None]:
        """(cause, reason, signal name) of an incarnation's end."""
        cause, reason, signame = _describe_exit(inc.exit_code)
        if inc.oom_killed:
            reason += " (out of memory: the cgroup's oom_kill count rose)"
        if inc.spawn_error:
            return "spawn_failed", f"spawn failed: {inc.spawn_error}", None
        if inc.external and inc.exit_code is None:
            # Only its parent may know how a standalone worker ended; without a Bye it was abnormal.
            cause, reason = "exit_code", "ended (exit status unknown: not a child of the runtime)"
        if inc.cause is not None:
            return inc.cause, f"{inc.detail} ({reason})", signame
        if inc.start_failed is not None:
            return "start_failed", f"start failed: {inc.start_failed.error}", signame
        if inc.bye is not None:
            if inc.bye.error is not None:
                return "error", f"gave up: {inc.bye.error}", None
            return ("stopped" if inc.stop_sent else "exited"), ("stopped" if inc.stop_sent else "exited"), None
        return cause, reason, signame

    def _decide(self, worker: Worker, inc: Incarnation, cause: str, reason: str, lost: int) -> None:
        """What follows the end of a worker's current incarnation: stop, respawn, or give up."""
        comp = worker.component
        if worker.stop_requested or worker.held:
            worker.state = WorkerState.BACKOFF if worker.held else WorkerState.STOPPED
            self._announce_stopped(worker)
            if not worker.held:
                self.calls.down(worker)
                worker.done.set()
            self._advance_group(worker)
            return
        policy = restart_policy(comp)
        if cause == "exited":  # it ended on its own, normally
            self._announce_stopped(worker)
            if policy == "permanent":
                self._restart(worker, inc, reason, None)
            else:
                self._settle_stopped(worker)
            return
        if cause == "error" and inc.bye is not None:  # a temporary service's tick raised: it gave up itself
            self._announce_stopped(worker)
            self._give_up(worker, inc, inc.bye.error or reason, inc.bye.traceback)
            return
        if cause == "spawn_failed" and inc.spawn_errno is None:  # no retry makes it loadable
            error = (
                f"the fork server could not create {worker.name!r}: {inc.spawn_error} "
                "(a component registered after boot must be picklable and its class importable)"
            )
            self._announce_failure(worker, error, None)
            self._give_up(worker, inc, error, None)
            return
        if cause == "spawn_failed":  # the environment refused (a limit): retried like a crash
            error = reason
        elif inc.start_failed is not None:
            error = inc.start_failed.error
        else:
            error = f"worker process {inc.pid} {reason}" if inc.pid is not None else reason
        if lost:
            error += f" ({lost} messages lost)"
        tb = inc.start_failed.traceback if inc.start_failed else None
        self._announce_failure(worker, error, tb)
        if policy == "temporary":
            self._give_up(worker, inc, error, tb)
        else:
            self._restart(worker, inc, error, tb)

    def _settle_stopped(self, worker: Worker) -> None:
        """The worker is stopped for good: say so to whoever waits for it."""
        worker.state = WorkerState.STOPPED
        self.calls.down(worker)
        worker.done.set()

    def _announce_failure(self, worker: Worker, error: str, tb: str | None) -> None:
        if isinstance(worker.component, Service):
            self.emit(m.ServiceError(service=worker.name, error=error, traceback=tb))
        else:
            self.emit(m.DeviceFailed(device=worker.name, kind=worker.kind, error=error, traceback=tb))

    def _announce_stopped(self, worker: Worker) -> None:
        if isinstance(worker.component, Device):
            self.emit(m.DeviceDetached(device=worker.name, kind=worker.kind))
        else:
            self.emit(m.ServiceStopped(service=worker.name))

    def _restart(self, worker: Worker, inc: Incarnation, error: str, tb: str | None) -> None:
        """Respawn per the intensity and backoff rules, or give up; with the group's strategy."""
        comp = worker.component
        if self.closing:
            self._settle_stopped(worker)
            return
        now = time.monotonic()
        while worker.restart_times and now - worker.restart_times[0] > comp.restart_window:
            worker.restart_times.popleft()
        if len(worker.restart_times) >= comp.max_restarts:
            why = f"{comp.max_restarts} restarts within {comp.restart_window:g}s; last: {error}"
            self._give_up(worker, inc, why, tb)
            return
        worker.restart_times.append(now)
        delay = self._backoff(worker)
        worker.streak += 1
        worker.state = WorkerState.BACKOFF
        self.emit(m.WorkerBackoff(worker.name, worker.role, inc.pid or 0, delay, worker.streak, error))
        group = self.groups.get(worker.group) if worker.group is not None else None
        if group is not None and group.strategy != "one_for_one":
            self._start_plan(Plan(self, group, worker.name, delay))
            return
        assert self.hub is not None
        worker.backoff_timer = self.hub.call_later(delay, lambda: self._respawn_after_backoff(worker))

    def _backoff(self, worker: Worker) -> float:
        comp = worker.component
        # Jitter keeps workers that failed together from coming back in lock step.
        return backoff_delay(worker.streak, comp.backoff_initial, comp.backoff_max, random.uniform(0.75, 1.25))

    def _respawn_after_backoff(self, worker: Worker) -> None:
        worker.backoff_timer = None
        if worker.stop_requested:
            self._settle_stopped(worker)
            return
        self.respawn(worker)

    def respawn(self, worker: Worker) -> None:
        """Start the next incarnation of a worker that is waiting to come back."""
        if self.closing:
            self._settle_stopped(worker)
            return
        worker.held = False
        worker.restarts += 1
        if isinstance(worker.component, Service):
            self.emit(m.ServiceRestart(service=worker.name))
        try:
            self._spawn(worker)
        except SpawnRefused as exc:  # no fork server, or no slot: nothing to wait for
            worker.current = None
            self._give_up(worker, None, str(exc), None)
        except BaseException as exc:
            # A bug of ours is not passed off as a reason to give up: it goes on to the hub,
            # which reports it; the worker is not left waiting for a process that never comes.
            worker.current = None
            self._give_up(worker, None, f"internal error while respawning: {exc!r}", None)
            raise

    def _give_up(self, worker: Worker, inc: Incarnation | None, error: str, tb: str | None) -> None:
        worker.state = WorkerState.FAILED
        worker.current = None
        worker.last_exit = f"gave up: {error}"
        self.calls.down(worker)
        pid = (inc.pid or 0) if inc is not None else 0
        self.emit(m.WorkerGaveUp(worker.name, worker.role, pid, worker.restarts, error))
        if isinstance(worker.component, Service):
            self.emit(m.ServiceFailure(service=worker.name, error=error, traceback=tb))
        worker.done.set()
        if worker.component.critical:
            self.halt(f"critical {worker.role} {worker.name!r} failed: {error}")
        group = self.groups.get(worker.group) if worker.group is not None else None
        if group is not None and group.strategy != "one_for_one" and not worker.held and not self.closing:
            self._start_plan(Plan(self, group, worker.name, 0.0, give_up=f"group member {worker.name!r} gave up"))

    def fail_held(self, worker: Worker, reason: str) -> None:
        """A member stopped because its group gave up."""
        worker.held = True  # its group is giving up already: no plan of its own
        self._give_up(worker, None, reason, None)

    def later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the hub thread after ``delay`` seconds."""
        assert self.hub is not None
        return self.hub.call_later(delay, fn)

    def _start_plan(self, plan: Plan) -> None:
        if plan.group.plan is not None:
            plan.group.plan.cancel()  # a newer failure supersedes the restart under way
        plan.group.plan = plan
        for name in plan.group.affected(plan.failed):
            other = self.workers[name]
            if other.backoff_timer is not None:  # the plan starts it now, not its own timer
                other.backoff_timer.cancel()
                other.backoff_timer = None
        plan.advance()

    def _advance_group(self, worker: Worker) -> None:
        if worker.group is not None and (plan := self.groups[worker.group].plan) is not None:
            plan.advance()

    # ---- delivery -----------------------------------------------------------------

    def post(self, item: bytes) -> None:
        """Queue an encoded event for the workers that handle events (any thread)."""
        hub = self.hub
        with self._outbox_lock:
            if hub is not None and (hub.closing or not hub.thread.is_alive()) and hub.full():
                self.undelivered += 1  # shutdown waits for nobody: see _flow
                return
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

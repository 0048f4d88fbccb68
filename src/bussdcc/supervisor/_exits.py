"""Exits: every way an incarnation ends is reported here, classified, decided and applied (hub thread).

Entry points: :meth:`Exits.kill` (the watchdog, the hub's stall check, the start timeout judge
an incarnation must die: it is killed with that cause), :meth:`Exits.stop_for` (the health
watcher ends a responsive incarnation: gracefully, with that cause) and :meth:`Exits.ended` (the process is
gone: reaped by the fork server, seen by the pidfd of a joined worker, never made, or lost with
the fork server). Once its last frames are in, :meth:`Exits.finalize` closes its books, and
:meth:`Exits.conclude` asks the pure policy (``_policy.decide``) and applies the verdict:
respawn after a backoff (or by the group's plan), stop, or give up.
"""

from __future__ import annotations

import random
import signal
import time
from collections import deque
from collections.abc import Callable

from ..kernel import Device, Service
from ..kernel import _builtin as m
from ..kernel._vocab import ExitCause
from ._books import Books, SpawnRefused
from ._cgroup import oom_kills
from ._deps import dependents
from ._groups import Group, Plan
from ._policy import ExitKind, GiveUp, History, Policy, Respawn, Stop, decide, exit_kind
from ._spares import Spares
from ._stacks import Stacks
from ._states import Intent
from ._stopping import Stopping
from ._timers import Timer
from ._watchdog import Verdict
from ._workers import Incarnation, Worker, WorkerState

#: How long a dead worker's last frames may take to arrive before they count as lost.
DRAIN_GRACE = 0.5


def describe_exit(code: int | None) -> tuple[ExitCause, str, str | None]:
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


def classify(inc: Incarnation) -> tuple[ExitCause, str, str | None]:
    """(cause, reason, signal name) of an incarnation's end."""
    cause, reason, signame = describe_exit(inc.exit_code)
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


class Exits:
    """Where every exit is reported and every restart decision applied; drives group plans."""

    def __init__(
        self, books: Books, stopping: Stopping, spawn: Callable[[Worker], Incarnation], spares: Spares
    ) -> None:
        self.books = books
        self.workers = books.workers  # for the group plans (``_groups.Driver``)
        self._stopping = stopping
        self._spawn = spawn
        self._spares = spares
        #: A hung worker's stacks, asked for before it is killed.
        self.stacks = Stacks(books.fork.run_dir, lambda delay, fn: books._hub().call_later(delay, fn))

    # ---- entry points ---------------------------------------------------------------

    def kill(self, worker: Worker, inc: Incarnation, verdict: Verdict) -> None:
        """Kill an incarnation for ``verdict``; its exit is reported with that cause."""
        if inc.exited or not inc.blame(verdict.cause, verdict.reason):
            return
        b = self.books
        pid = inc.pid or 0
        if verdict.cause == "hung":
            b.targets.pop(inc.identity, None)

            def hung(stacks: str) -> None:
                # Said, then killed, once its stacks are in (or did not come in time, or it ended meanwhile).
                b.emit(m.WorkerHung(worker.name, worker.role, pid, inc.number, verdict.reason, stacks))
                said = f"{verdict.reason}; stacks:\n{stacks}" if stacks else f"{verdict.reason}; no stacks came"
                b.postmortem.note(worker.name, pid, said)
                b._signal(inc, signal.SIGKILL)

            if not self.stacks.begin(inc, hung):
                hung("")
            return
        if verdict.limit:
            b.emit(
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
        b.targets.pop(inc.identity, None)
        b._signal(inc, signal.SIGKILL)

    def stop_for(self, worker: Worker, inc: Incarnation, verdict: Verdict) -> None:
        """End an incarnation for ``verdict`` gracefully: Stop, then SIGTERM, then SIGKILL (as a stop does).

        Its ``stop()``/``disconnect()`` runs and what it emitted is delivered; its exit is still
        reported with ``verdict``'s cause and decided as a failure: the worker's intent stays ``run``.
        """
        if inc.exited or inc.stop_sent or not inc.blame(verdict.cause, verdict.reason):
            return
        self._stopping.begin(worker, inc)

    def ended(self, worker: Worker, inc: Incarnation, exit_code: int | None, *, drain: bool = False) -> None:
        """The process of ``inc`` is gone (or never was); ``drain``: its last frames may still be on their way."""
        inc.exit_code = exit_code
        if worker.current is inc and worker.intent == "run" and worker.died_at is None:
            worker.died_at = time.monotonic()  # respawn latency counts from here
        if not drain:
            inc.exited = True
            self.finalize(worker, inc)
            return
        oom = inc.oom
        if exit_code == -signal.SIGKILL and oom is not None:
            # Read now, once: SIGKILL is also what the OOM killer sends.
            count = oom_kills(oom[0])
            inc.oom_killed = count is not None and count > oom[1]
        inc.exited = True
        b = self.books
        b.targets.pop(inc.identity, None)
        # Fail its calls at once, unless a reply may still be on its way (a control
        # frame counted in shared memory but not received): then at finalize.
        if inc.controls >= b.slots.read(inc.slot)[1]:
            b.calls.ended(inc, classify(inc)[1], crashed=inc.bye is None)
        self.maybe_finalize(worker, inc)

    def maybe_finalize(self, worker: Worker, inc: Incarnation) -> None:
        """Finalize an ended incarnation once all it sent is in, or after ``DRAIN_GRACE``."""
        b = self.books
        items, controls = b.slots.read(inc.slot)
        if inc.next_seq > items and inc.controls >= controls:
            self.finalize(worker, inc)
        elif not inc.draining:
            inc.draining = True
            inc.timers.append(b._hub().call_later(DRAIN_GRACE, lambda: self.finalize(worker, inc)))

    def finalize(self, worker: Worker, inc: Incarnation) -> None:
        """Close the books of an ended incarnation, say how it ended, and decide what follows."""
        if inc.finalized:
            return
        if inc.gated and not inc.go_wanted and not inc.quiet:
            return  # ended at its gate, before boot came to it: said at its turn (``Spawning.release``)
        b = self.books
        inc.finalized = True
        self.stacks.forget(inc)  # a hang still being said is said first
        inc.cancel_timers()
        emitted, _ = b.slots.read(inc.slot)
        lost = max(0, emitted - inc.received)
        b.lost += lost
        b._retire(worker, inc)
        cause, reason, signame = classify(inc)
        last = b.postmortem.last(worker.name, inc.pid)
        b.calls.ended(inc, reason, crashed=inc.bye is None)
        if inc.pid is not None:
            b.postmortem.note(worker.name, inc.pid, f"exited: {reason}")
        if not inc.quiet:  # stopped at its gate: it never ran, so its end is not said either
            abnormal = cause not in ("stopped", "exited")
            b.emit(
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
                    output=last if abnormal else (),
                )
            )
        worker.last_exit = reason
        if worker.current is inc:
            worker.current = None
            if inc.ready_at is not None and time.monotonic() - inc.ready_at >= worker.component.backoff_reset:
                worker.streak = 0  # it ran long enough to count as healthy
            self.conclude(worker, inc, cause, reason, lost)
        elif worker.spare is inc:
            self._spares.lost(worker, inc)  # it died waiting
        # Last: whoever waits on the outcome (boot) sees the decision made, too.
        inc.ticket = b.dispatcher.posted
        inc.outcome.set()

    # ---- the decision -----------------------------------------------------------------

    def conclude(self, worker: Worker, inc: Incarnation, cause: ExitCause, reason: str, lost: int) -> None:
        """What follows the end of a worker's current incarnation: ask the policy, then do as it says."""
        kind = exit_kind(cause, requested=worker.intent != "run", environmental=inc.spawn_errno is not None)
        # Stopped at its gate, it never started: it neither stopped nor failed, and nothing is said.
        error, tb = (reason, None) if inc.quiet else self._say_end(worker, inc, kind, reason, lost)
        history = History(tuple(worker.restart_times), worker.streak)
        jitter = random.uniform(0.75, 1.25)  # workers that failed together do not come back in lock step
        b = self.books
        verdict = decide(
            Policy.of(worker.component), kind, history, time.monotonic(), error=error, closing=b.closing, jitter=jitter
        )
        if not isinstance(verdict, Respawn):
            worker.died_at = None  # not coming back by itself: no respawn to time
            self._spares.discard(worker)  # nor from its spare
        match verdict:
            case Stop() if kind == "requested":
                worker.move(WorkerState.BACKOFF if worker.held else WorkerState.STOPPED)
                if not worker.held:
                    b.calls.down(worker)
                    worker.done.set()
                b._advance_group(worker)
            case Stop():
                b._settle_stopped(worker)
            case GiveUp(reason=why):
                self._give_up(worker, inc, why, tb)
            case Respawn(delay=delay, history=after):
                worker.restart_times = deque(after.times)
                worker.streak = after.streak
                worker.move(WorkerState.BACKOFF)
                b.emit(m.WorkerBackoff(worker.name, worker.role, inc.pid or 0, delay, worker.streak, error))
                group = b.groups.get(worker.group) if worker.group is not None else None
                if group is not None and group.strategy != "one_for_one":
                    self._start_plan(Plan(self, group, worker.name, delay))
                    return
                if (binding := self._binding(worker)) is not None:
                    self._start_plan(Plan(self, binding, worker.name, delay))
                    return
                if delay <= 0:
                    self._respawn_after_backoff(worker)  # at once: not a turn of the hub loop later
                    return
                worker.backoff_timer = b._hub().call_later(delay, lambda: self._respawn_after_backoff(worker))

    def _say_end(
        self, worker: Worker, inc: Incarnation, kind: ExitKind, reason: str, lost: int
    ) -> tuple[str, str | None]:
        """Announce how the incarnation ended (stopped, or failed and why); the error and traceback the policy sees."""
        error: str = reason
        tb: str | None = None
        match kind:
            case "requested" | "normal":
                self._announce_stopped(worker)
            case "gave_up":  # a temporary service's tick raised: it gave up itself
                self._announce_stopped(worker)
                assert inc.bye is not None
                error, tb = inc.bye.error or reason, inc.bye.traceback
            case "unloadable":  # no retry makes it loadable
                error = (
                    f"the fork server could not create {worker.name!r}: {inc.spawn_error} "
                    "(a component registered after boot must be picklable and its class importable)"
                )
                self._announce_failure(worker, error, None)
            case "refused" | "abnormal" | "unhealthy":
                if inc.start_failed is not None:
                    error, tb = inc.start_failed.error, inc.start_failed.traceback
                elif kind != "refused" and inc.pid is not None:
                    error = f"worker process {inc.pid} {reason}"
                if lost:
                    error += f" ({lost} messages lost)"
                self._announce_failure(worker, error, tb)
        return error, tb

    def _announce_failure(self, worker: Worker, error: str, tb: str | None) -> None:
        if isinstance(worker.component, Service):
            self.books.emit(m.ServiceError(service=worker.name, error=error, traceback=tb))
        else:
            self.books.emit(m.DeviceFailed(device=worker.name, kind=worker.kind, error=error, traceback=tb))

    def _announce_stopped(self, worker: Worker) -> None:
        if isinstance(worker.component, Device):
            self.books.emit(m.DeviceDetached(device=worker.name, kind=worker.kind))
        else:
            self.books.emit(m.ServiceStopped(service=worker.name))

    # ---- respawning and giving up ------------------------------------------------------

    def _respawn_after_backoff(self, worker: Worker) -> None:
        worker.backoff_timer = None
        if worker.stop_requested:
            self.books._settle_stopped(worker)
            return
        self.respawn(worker)

    def respawn(self, worker: Worker) -> None:
        """Start the next incarnation of a worker that is waiting to come back."""
        b = self.books
        if b.closing:
            b._settle_stopped(worker)
            return
        worker.intent = "run"
        worker.restarts += 1
        if isinstance(worker.component, Service):
            b.emit(m.ServiceRestart(service=worker.name))
        try:
            if self._spares.release(worker) is None:  # the spare, if it has one, else a fork
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
        b = self.books
        self._spares.discard(worker)
        worker.move(WorkerState.FAILED)
        worker.current = None
        worker.died_at = None
        worker.last_exit = f"gave up: {error}"
        b.calls.down(worker)
        pid = (inc.pid or 0) if inc is not None else 0
        b.emit(m.WorkerGaveUp(worker.name, worker.role, pid, worker.restarts, error))
        if isinstance(worker.component, Service):
            b.emit(m.ServiceFailure(service=worker.name, error=error, traceback=tb))
        worker.done.set()
        if worker.component.critical:
            b.halt(f"critical {worker.role} {worker.name!r} failed: {error}")
        group = b.groups.get(worker.group) if worker.group is not None else None
        if group is not None and group.strategy != "one_for_one" and not worker.held and not b.closing:
            self._start_plan(Plan(self, group, worker.name, 0.0, give_up=f"group member {worker.name!r} gave up"))
        elif not worker.held and not b.closing and (binding := self._binding(worker)) is not None:
            self._start_plan(
                Plan(self, binding, worker.name, 0.0, give_up=f"{worker.name!r}, which it requires, gave up")
            )

    def _binding(self, worker: Worker) -> Group | None:
        """The workers that ``require`` ``worker`` (and it first), as a group that restarts together; None if none."""
        b = self.books
        old = b.bindings.get(worker.name)
        if old is not None and old.plan is not None:
            old.plan.cancel()  # a newer exit supersedes the restart under way
        bound = dependents({n: w.component for n, w in b.workers.items()}, worker.name)
        if not bound:
            b.bindings.pop(worker.name, None)
            return None
        binding = Group(f"requires {worker.name}", "one_for_all", [worker.name, *bound])
        b.bindings[worker.name] = binding
        return binding

    # ---- stops that are no failure: a request, a group's plan ----------------------------

    def stop(self, name: str) -> Worker:
        """Stop ``name`` gracefully, as requested, escalating to SIGTERM then SIGKILL."""
        worker = self.workers[name]
        self._quiet_at_gate(worker, "stop")
        self._spares.discard(worker)  # a stopped worker is not respawned
        return self._stopping.stop(name)

    def hold(self, worker: Worker) -> None:
        """Stop a group member for its group's restart (its exit is not a failure)."""
        self._quiet_at_gate(worker, "hold")
        self._spares.discard(worker)  # the group's plan starts it afresh
        self._stopping.hold(worker)

    def _quiet_at_gate(self, worker: Worker, intent: Intent) -> None:
        """``worker`` is stopped or held: if it waits at its gate, nothing is said of its end.

        It never ran, as a worker boot has not come to yet never started; an end held back
        for its turn (which now never comes) is closed now.
        """
        inc = worker.current
        if inc is None or not inc.gated:
            return
        inc.quiet = True
        if inc.exited:
            worker.intent = intent
            self.finalize(worker, inc)

    def fail_held(self, worker: Worker, reason: str) -> None:
        """A member stopped because its group gave up."""
        worker.intent = "hold"  # its group is giving up already: no plan of its own
        self._give_up(worker, None, reason, None)

    def later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the hub thread after ``delay`` seconds."""
        return self.books._hub().call_later(delay, fn)

    def _start_plan(self, plan: Plan) -> None:
        group: Group = plan.group
        if group.plan is not None:
            group.plan.cancel()  # a newer failure supersedes the restart under way
        group.plan = plan
        for name in group.affected(plan.failed):
            other = self.books.workers[name]
            if other.backoff_timer is not None:  # the plan starts it now, not its own timer
                other.backoff_timer.cancel()
                other.backoff_timer = None
        plan.advance()

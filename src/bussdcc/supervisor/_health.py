"""Health that knows the data: what a worker promised to emit, and its own ``health()`` (hub thread).

A Service or Device may declare ``expect = {"plant.reading": 2.0}`` (at least one
``plant.reading`` from it every 2 s once ready) and define ``health()``, which its worker runs
on a thread of its own and reports as :class:`~bussdcc.kernel.protocol.Health` frames.

The parent sees every message a worker sends: :meth:`Health.saw` (dispatch thread) stamps
``(worker, name) -> when`` for the pairs someone expects, one dict lookup per message.
A periodic job on the hub compares the stamps with the deadlines and notices a ``health()``
that stopped answering (a call that hangs counts as failing). A worker found unhealthy is
reported (``worker.unhealthy``) and, per its ``on_unhealthy``, stopped with the cause
``unhealthy`` (gracefully: a Stop, escalating to SIGTERM then SIGKILL if it does not end; the
exits then respawn it under its policy, intensity and backoff) or kept,
in state ``unhealthy``, until every check passes again (``worker.healthy``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..kernel import _builtin as m
from ..kernel import protocol as p
from ..kernel._components import has_health
from ._books import Books
from ._timers import Periodic
from ._watchdog import Verdict
from ._workers import Incarnation, Worker, WorkerState

__all__ = ["CHECK_PERIOD", "Health"]

#: How often the hub compares what workers emitted with what they promised (seconds).
CHECK_PERIOD = 0.1
#: The check of a worker's own ``health()`` in the books of failing checks.
HEALTH = "health"


class _Watch:
    """The health of one ready incarnation: its failing checks (what -> why) and since when."""

    __slots__ = ("failing", "inc", "last_report", "ready_at", "reported", "since", "worker")

    def __init__(self, worker: Worker, inc: Incarnation, now: float) -> None:
        self.worker = worker
        self.inc = inc
        self.ready_at = now
        #: When its last ``health()`` result arrived (its readiness until the first).
        self.last_report = now
        self.failing: dict[str, str] = {}
        #: The failing checks already reported (each is reported once until it recovers).
        self.reported: set[str] = set()
        #: When it became unhealthy (None: healthy).
        self.since: float | None = None


class Health:
    """Watches the expectations and ``health()`` of every ready worker that has either."""

    def __init__(self, books: Books, end: Callable[[Worker, Incarnation, Verdict], None]) -> None:
        self.books = books
        #: Ends an incarnation for a verdict (gracefully, escalating); its exit says the verdict's cause.
        self._end = end
        #: (worker, message name) -> monotonic time it was last dispatched, for the expected pairs only.
        #: Written by the Ingest on the dispatch thread (existing keys only), read and extended on the hub thread.
        self.seen: dict[tuple[str, str], float] = {}
        self._watches: dict[str, _Watch] = {}
        self._job: Periodic | None = None

    # ---- what arrives ------------------------------------------------------------------

    def on_ready(self, worker: Worker, inc: Incarnation) -> None:
        """An incarnation is ready: its checks start now."""
        if worker.current is not inc:
            return
        comp = worker.component
        if not comp.expect and not has_health(comp):
            self._watches.pop(worker.name, None)
            return
        for name in comp.expect:
            self.seen.setdefault((worker.name, name), 0.0)
        self._watches[worker.name] = _Watch(worker, inc, time.monotonic())
        if self._job is None or self._job.done:
            self._job = self.books._hub().every(CHECK_PERIOD, self._check, "health")

    def on_report(self, worker: Worker, inc: Incarnation, frame: p.Health) -> None:
        """A ``health()`` result from ``inc``."""
        watch = self._watches.get(worker.name)
        if watch is None or watch.inc is not inc:
            return
        watch.last_report = time.monotonic()
        if frame.ok:
            watch.failing.pop(HEALTH, None)
        else:
            watch.failing[HEALTH] = frame.reason or "health() failed"
        self._judge(watch, watch.last_report)

    def forget(self, worker: str) -> None:
        """``worker`` was removed (hub thread): its stamps and watch go with it."""
        self._watches.pop(worker, None)
        for key in [key for key in self.seen if key[0] == worker]:
            self.seen.pop(key, None)

    # ---- the deadlines -------------------------------------------------------------------

    def _check(self) -> bool:
        """Compare every watched worker's stamps with its deadlines; False once none is watched."""
        now = time.monotonic()
        for name, watch in list(self._watches.items()):
            worker, inc = watch.worker, watch.inc
            if worker.current is not inc or inc.exited or inc.cause is not None or inc.stop_sent:
                del self._watches[name]  # it is ending: its exit, not its health, says what follows
                continue
            comp = worker.component
            for message, period in comp.expect.items():
                check = f"expect {message}"
                last = max(self.seen.get((name, message), 0.0), watch.ready_at)
                if now - last > period:
                    watch.failing[check] = (
                        f"no {message} for {now - last:.1f}s (expected at least one every {period:g}s)"
                    )
                else:
                    watch.failing.pop(check, None)
            if has_health(comp):
                silent = now - watch.last_report
                if silent > comp.health_interval + comp.health_timeout:
                    watch.failing[HEALTH] = (
                        f"health() gave no answer for {silent:.1f}s "
                        f"(health_interval {comp.health_interval:g}s + health_timeout {comp.health_timeout:g}s)"
                    )
            self._judge(watch, now)
        return bool(self._watches)

    def _judge(self, watch: _Watch, now: float) -> None:
        """Say what changed: a check failing anew, or every check passing again; act per ``on_unhealthy``."""
        worker, inc = watch.worker, watch.inc
        if worker.current is not inc or inc.exited or inc.cause is not None or inc.stop_sent:
            return
        b = self.books
        action = worker.component.on_unhealthy
        pid = inc.pid or 0
        if watch.failing:
            watch.reported &= watch.failing.keys()  # a check that passed again is news when it fails again
            new = [what for what in watch.failing if what not in watch.reported]
            if not new:
                return
            if watch.since is None:
                watch.since = now
            for what in new:
                watch.reported.add(what)
                b.emit(m.WorkerUnhealthy(worker.name, worker.role, pid, inc.number, what, watch.failing[what], action))
            if worker.state is WorkerState.RUNNING:
                worker.move(WorkerState.UNHEALTHY)
            if action == "restart":
                what = new[0]
                self._watches.pop(worker.name, None)
                self._end(worker, inc, Verdict("unhealthy", f"unhealthy: {what}: {watch.failing[what]}"))
            return
        if watch.since is not None:
            since, watch.since = watch.since, None
            watch.reported.clear()
            if worker.state is WorkerState.UNHEALTHY:
                worker.move(WorkerState.RUNNING)
            b.emit(m.WorkerHealthy(worker.name, worker.role, pid, inc.number, round(now - since, 3)))

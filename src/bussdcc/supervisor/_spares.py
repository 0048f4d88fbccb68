"""Hot spares: for a worker with ``spare = True``, its next incarnation forked ahead, gated (hub thread).

Every rule about spares is kept here; the rest of the supervisor only says when:

- **provide**: once an incarnation is ready, its worker gets one spare: forked and set up
  like any gated incarnation (signals, channel, handshake, Hello), then waiting at its gate,
  with no events and no code of the component run. It holds its own identity, token and slot,
  and the next incarnation number, which counts only once it is released.
- **release**: a respawn the policy decided (at once, after a backoff, or by a group plan:
  ``Exits.respawn``) takes the spare instead of forking: Go, and it is the current incarnation.
  From there on it is a respawned incarnation like any other, announced as one.
- **discard**: in every other case the spare is ended: the policy stops or gives up, the
  worker is stopped (also to be removed or replaced by a reload), held by its group, or the
  runtime shuts down. It never ran, so nothing is said of its end (``Incarnation.quiet``).
- **lost**: a spare that dies while it waits is closed quietly; a ready incarnation may fork
  :data:`SPARES_PER_READY` spares at most, so a spare that cannot live is no crash loop.

A spare never takes one of the last :data:`SLOTS_KEPT` of the worker slots while they are free.
"""

from __future__ import annotations

import signal

from ._books import Books, SpawnRefused
from ._spawning import Spawning
from ._workers import Incarnation, Worker, WorkerState

#: Spares forked for one ready incarnation: its own, and one to replace it if it dies waiting.
SPARES_PER_READY = 2
#: The share of the worker slots a spare never takes while free: they stay for workers that run.
SLOTS_KEPT = 1 / 8


class Spares:
    """Forks, releases and ends workers' hot spares."""

    def __init__(self, books: Books, spawning: Spawning) -> None:
        self.books = books
        self._spawning = spawning

    def on_ready(self, worker: Worker, inc: Incarnation) -> None:
        """``inc``, the worker's current incarnation, is ready: it may have a spare."""
        if worker.current is inc:
            worker.spares_left = SPARES_PER_READY
            self.provide(worker)

    def provide(self, worker: Worker) -> None:
        """Fork a spare for ``worker`` if it keeps one, has none, and its current incarnation runs."""
        b = self.books
        inc = worker.current
        if (
            not worker.component.spare
            or worker.spare is not None
            or worker.spares_left <= 0
            or worker.argv is not None  # started by exec: it cannot wait at a gate
            or b.closing
            or len(b._free_slots) <= b.slots.size * SLOTS_KEPT
            or worker.intent != "run"
            or inc is None
            or inc.external
            or not inc.ready
            or inc.exited
            or inc.stop_sent
            or inc.cause is not None
        ):
            return
        worker.spares_left -= 1
        try:
            self._spawning.spawn_spare(worker)
        except SpawnRefused:
            pass  # a spare is only a head start: without one, a respawn forks as always

    def release(self, worker: Worker) -> Incarnation | None:
        """Make ``worker``'s spare its current incarnation and let it run (None: it has no live spare)."""
        inc = worker.spare
        if inc is None:
            return None
        worker.spare = None
        if inc.exited or inc.cause is not None or inc.number != worker.incarnations + 1:
            self._end(worker, inc)  # dying already (or, by a bug, not the next): the respawn forks
            return None
        worker.incarnations = inc.number
        worker.current = inc
        inc.quiet = False  # it runs from now on: its end is said as any incarnation's
        worker.move(WorkerState.STARTING)
        inc.go_wanted = True
        if inc.hello:
            self._spawning.go(worker, inc)
        # Else Go goes out with its Hello (``Ingest``); until then its start timer is the Hello's.
        return inc

    def discard(self, worker: Worker) -> None:
        """End ``worker``'s spare, if it has one: it will not be released."""
        inc = worker.spare
        if inc is not None:
            worker.spare = None
            self._end(worker, inc)

    def close(self) -> None:
        """Shutdown has begun: end every spare."""
        for worker in self.books.workers.values():
            self.discard(worker)

    def lost(self, worker: Worker, inc: Incarnation) -> None:
        """The spare ``inc`` ended while it waited (its books are closed): fork another, if allowed."""
        if worker.spare is inc:
            worker.spare = None
            self.provide(worker)

    def _end(self, worker: Worker, inc: Incarnation) -> None:
        # Killed outright: it ran no code of the component, so there is nothing to stop gracefully.
        # Its end is closed quietly by ``Exits.finalize``, as it is no longer the worker's spare.
        inc.quiet = True
        if inc.exited:
            return
        if inc.pid is None:
            inc.stop_sent = True  # no process known yet: it gets Stop with its Hello and ends at its gate
        else:
            self.books._signal(inc, signal.SIGKILL)

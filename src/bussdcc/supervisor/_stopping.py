"""Stopping workers: the graceful Stop, then SIGTERM, then SIGKILL (hub thread)."""

from __future__ import annotations

import signal

from ..kernel import protocol as p
from ._books import Books
from ._workers import Incarnation, Worker, WorkerState


class Stopping:
    """Stops, holds for a group restart, and the shutdown's end of respawning."""

    def __init__(self, books: Books) -> None:
        self.books = books

    def stop(self, name: str) -> Worker:
        """Stop ``name`` gracefully, escalating to SIGTERM then SIGKILL."""
        b = self.books
        worker = b.workers[name]
        worker.intent = "stop"  # a stop ends it for good, whatever its group had planned
        if worker.group is not None and (plan := b.groups[worker.group].plan) is not None:
            plan.drop(name)  # the rest of the group restart goes on without it
        for binding in list(b.bindings.values()):
            if binding.plan is not None and name in binding.members:
                binding.plan.drop(name)
        if worker.backoff_timer is not None:
            worker.backoff_timer.cancel()
            worker.backoff_timer = None
        inc = worker.current
        if inc is None or inc.exited:
            if worker.state in (WorkerState.BACKOFF, WorkerState.STARTING):
                worker.move(WorkerState.STOPPED)
            b.calls.down(worker)
            worker.done.set()
            return worker
        self.begin(worker, inc)
        return worker

    def close(self) -> None:
        """Shutdown has begun: respawn nothing more, and let waiting workers count as stopped."""
        b = self.books
        b.closing = True
        for group in [*b.groups.values(), *b.bindings.values()]:
            if group.plan is not None:
                group.plan.cancel()
        for worker in b.workers.values():
            if worker.backoff_timer is not None:
                worker.backoff_timer.cancel()
                worker.backoff_timer = None
            if worker.state is WorkerState.BACKOFF and worker.current is None:
                b._settle_stopped(worker)

    def hold(self, worker: Worker) -> None:
        """Stop a group member for its group's restart (its exit is not a failure)."""
        worker.intent = "hold"
        inc = worker.current
        if inc is not None and not inc.exited:
            self.begin(worker, inc)

    def begin(self, worker: Worker, inc: Incarnation) -> None:
        """Ask ``inc`` to stop; SIGTERM after ``stop_timeout``, SIGKILL ``kill_timeout`` after that."""
        b = self.books
        hub = b._hub()
        worker.move(WorkerState.STOPPING)
        self.send_stop(worker, inc)
        comp = worker.component

        def term() -> None:
            if not inc.exited:
                if b.slots.activity(inc.slot)[0] == "stop":
                    inc.blame("hung", f"hung: stop/disconnect ran longer than stop_timeout {comp.stop_timeout:g}s")
                b._signal(inc, signal.SIGTERM)
                inc.timers.append(hub.call_later(comp.kill_timeout, kill))

        def kill() -> None:
            if not inc.exited:
                b._signal(inc, signal.SIGKILL)

        inc.timers.append(hub.call_later(comp.stop_timeout, term))

    def send_stop(self, worker: Worker, inc: Incarnation) -> None:
        """Send Stop to ``inc`` now, or on its Hello if it has not said it yet."""
        inc.stop_sent = True
        # A worker that has not said hello is not routable yet; it gets Stop on hello.
        if inc.hello and self.books.hub is not None:
            self.books.hub.send(inc.identity, p.encode(p.Stop()))

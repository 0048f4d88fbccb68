"""Supervision: start, watch, stop and respawn worker processes (hub thread, except where noted).

``Supervisor`` is the hub's client and the runtime's handle on its workers. It composes one
part per job, each in its own module, all sharing the books (``_books``):

- ``_spawning``: incarnations, fork requests, joins, readiness, start timeouts;
- ``_ingest``: frames from workers, sequence accounting, Bye/ByeAck;
- ``_watchdog``: hangs and resource limits of live workers;
- ``_health``: what workers promised to emit (``expect``) and their own ``health()``;
- ``_stopping``: the graceful stop and its escalation, holds for group restarts;
- ``_exits``: every exit, classified and decided by the pure policy (``_policy``), then applied;
- ``_spares``: hot spares, forked ahead for workers that keep one, released by a respawn;
- ``_states``: the worker state machine every state change goes through.
"""

from __future__ import annotations

import functools
import os
import signal
import time

from ..errors import RegistrationError
from ..kernel import Device, Service, Strategy
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._books import Books, NoForkServer, NoFreeSlot, SpawnRefused
from ._exits import DRAIN_GRACE, Exits
from ._groups import Group
from ._health import Health
from ._ingest import REFUSAL_PERIOD, Ingest
from ._spares import Spares
from ._spawning import Spawning
from ._stopping import Stopping
from ._watchdog import Verdict, Watchdog
from ._workers import Incarnation, Worker, WorkerStatus

__all__ = ["DRAIN_GRACE", "REFUSAL_PERIOD", "NoForkServer", "NoFreeSlot", "SpawnRefused", "Supervisor"]


class Supervisor(Books):
    """The hub's client: turns frames and fork-server reports into worker state and messages."""

    def _compose(self) -> None:
        """Make the parts that work on these books (called once, by the books' constructor)."""
        self._stopping = Stopping(self)
        self._watchdog = Watchdog(self, self._kill)
        self._spawning = Spawning(
            self, kill=self._kill, ended=self._ended, watch=self._watchdog.soon, watch_ready=self._watchdog.ready
        )
        self._spares = Spares(self, self._spawning)
        self._exits = Exits(self, self._stopping, self._spawning.spawn, self._spares)
        self._health = Health(self, self._exits.stop_for)  # graceful: a responsive worker cleans up
        self._ingest = Ingest(
            self,
            ready=self._on_ready,
            send_stop=self._stopping.send_stop,
            go=self._spawning.go,
            maybe_finalize=self._exits.maybe_finalize,
            health=self._health.on_report,
            seen=self._health.seen,
        )

    def _on_ready(self, worker: Worker, inc: Incarnation) -> None:
        self._spawning.on_ready(worker, inc)
        self._health.on_ready(worker, inc)  # its expectations and health() count from now
        self._spares.on_ready(worker, inc)  # last: what was said of its start goes first

    # Every report of an exit, from whichever part, goes to the exits.
    def _kill(self, worker: Worker, inc: Incarnation, verdict: Verdict) -> None:
        self._exits.kill(worker, inc, verdict)

    def _ended(self, worker: Worker, inc: Incarnation, exit_code: int | None) -> None:
        self._exits.ended(worker, inc, exit_code)

    # ---- registry -----------------------------------------------------------------

    def add(
        self, component: Service | Device, *, pickled: bytes | None = None, argv: list[str] | None = None
    ) -> Worker:
        """Know a component: in the fork server's memory, ``pickled``, or run by exec'ing ``argv``."""
        if component.name in self.workers:
            raise RegistrationError(f"a worker named {component.name!r} exists already")
        worker = Worker(component, forked=pickled is None and argv is None, on_move=self.changed)
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
        self.postmortem.forget(name)
        self._health.forget(name)  # workers come and go under fresh names: their stamps must not stay

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

    # ---- the runtime's commands (hub thread) -----------------------------------------

    def start(self, name: str, *, gated: bool = False) -> Incarnation:
        """Start a new incarnation of ``name`` (``gated``: its component runs only once :meth:`release` says so)."""
        return self._spawning.start(name, gated=gated)

    def release(self, name: str) -> Incarnation | None:
        """Boot has come to ``name``, started gated: let it run its component (its current incarnation)."""
        return self._spawning.release(name)

    def join(self, name: str, pid: int) -> Incarnation:
        """Adopt process ``pid``, started outside the fork server, as the next incarnation of ``name``."""
        return self._spawning.join(name, pid)

    def stop(self, name: str) -> Worker:
        """Stop ``name`` gracefully, escalating to SIGTERM then SIGKILL."""
        return self._exits.stop(name)

    def close(self) -> None:
        """Shutdown has begun: respawn nothing more, and let waiting workers count as stopped."""
        self._stopping.close()
        self._spares.close()

    def hold(self, worker: Worker) -> None:
        """Stop a group member for its group's restart (its exit is not a failure)."""
        self._exits.hold(worker)

    def respawn(self, worker: Worker) -> None:
        """Start the next incarnation of a worker that is waiting to come back."""
        self._exits.respawn(worker)

    def on_exit(self, pid: int, exit_code: int | None) -> None:
        """Process ``pid`` ended (``exit_code`` None: not our child, so its status is unknown)."""
        entry = self._by_pid.pop(pid, None)
        if entry is not None:
            self._exits.ended(*entry, exit_code, drain=True)

    # ---- the hub's callbacks -------------------------------------------------------------

    def on_frame(self, identity: bytes, data: bytes) -> None:
        self._ingest.on_frame(identity, data)

    def on_stranger(self) -> None:
        self._ingest.on_stranger()

    def admit(self, username: bytes, password: bytes) -> bool:
        """Whether a peer may complete its handshake on the workers' endpoint (hub thread, asked by ZAP)."""
        return self._ingest.admit(username, password)

    def control_denied(self, count: int) -> None:
        """``count`` connections to the control endpoint were refused at the handshake (hub thread)."""
        self._ingest.control_denied(count)

    def on_fatal(self, reason: str) -> None:
        # Without the fork server every worker died with it (their death signal)
        # and nobody will report it: close their books now, respawn nothing.
        self.fatal = reason
        self.close()
        for worker in self.workers.values():
            worker.intent = "stop"
        for worker, inc in list(self._by_identity.values()):
            # Their helpers were not: the group outlives its leader while members remain.
            if inc.pid is not None:
                try:
                    os.killpg(inc.pid, signal.SIGKILL)
                except OSError:
                    pass
            self._exits.ended(worker, inc, -signal.SIGKILL)
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
        if entry is not None:
            self._kill(*entry, Verdict("hung", f"hung: took no events for {seconds:.1f}s"))

    def takes_events(self, identity: bytes) -> bool:
        """Whether the worker ``identity`` is sent dispatched events (only those can congest the hub)."""
        return identity in self.targets

    def backlogged(self) -> bool:
        """Whether dispatch is so far behind that the hub should stop reading (back-pressure)."""
        return self.dispatcher.full()

    def on_fork_readable(self) -> None:
        for report in self.fork.reports():
            match report:
                case p.Spawned():
                    self._spawning.on_spawned(report)
                case p.SpawnFailed():
                    self._spawning.on_spawn_failed(report)
                case p.Reaped():
                    self.on_exit(report.pid, report.exit_code)
                case p.Output():
                    self._show(report)

    def _show(self, report: p.Output) -> None:
        self.postmortem.output(report)  # kept even when it cannot be shown
        show = self.on_output
        if show is None:
            return
        if self.dispatcher.full():
            # Memory stays bounded: what cannot be shown now is counted, not queued.
            self.output_dropped += len(report.lines)
            return
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

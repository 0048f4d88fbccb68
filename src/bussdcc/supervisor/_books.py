"""The supervisor's books: the tables every part of supervision reads and writes (hub thread).

The parts (``_spawning``, ``_ingest``, ``_stopping``, ``_exits``, ``_watchdog``) each own one job
and share these books; ``Supervisor`` is built on them and composes the parts. Only the hub
thread writes them, except where a field's comment says otherwise.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import deque
from collections.abc import Callable

from ..errors import BussdccError
from ..kernel import ClockProtocol, Message, StateStore
from ..kernel import protocol as p
from ..kernel._boundary import SlotTable
from ._calls import CallRouter
from ._dispatcher import Dispatcher
from ._forkserver import ForkServer
from ._groups import Group
from ._hub import Hub
from ._latency import RESPAWN_BUCKETS, Histogram
from ._postmortem import PostMortem
from ._rundir import RunDirGuard
from ._workers import Incarnation, Worker, WorkerState

__all__ = ["Books", "NoForkServer", "NoFreeSlot", "SpawnRefused"]

#: Routing ids of ended incarnations remembered, so that their late frames are not taken for a stranger's.
_RETIRED = 256


class SpawnRefused(BussdccError):
    """No worker process can be started now (nothing was started)."""


class NoForkServer(SpawnRefused):
    """The fork server is gone or cannot be reached."""


class NoFreeSlot(SpawnRefused):
    """Every worker slot is taken by a live worker."""


class Books:
    """Workers, their incarnations by routing id and pid, slots, counters and collaborators."""

    def __init__(
        self,
        *,
        fork: ForkServer,
        slots: SlotTable,
        state: StateStore,
        clock: ClockProtocol,
        emit: Callable[[Message], None],
        emit_now: Callable[[Message], None],
        dispatch_item: Callable[[p.Envelope, bytes, str, int, int], None],
        dispatcher: Dispatcher,
        halt: Callable[[str], None],
        changed: Callable[[], None] = lambda: None,
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
        #: Called after any worker's state changed (hub thread): whoever waits for a state looks again.
        self.changed = changed
        self.hub: Hub | None = None
        #: Shows what workers print (set by the runtime).
        self.on_output: Callable[[p.Output], None] | None = None
        #: Keeps the last lines of each worker process, and writes the log files (set by the runtime).
        self.postmortem = PostMortem()
        self.workers: dict[str, Worker] = {}
        self.groups: dict[str, Group] = {}
        #: The restarts under way of workers with dependents (``requires``), by the required worker's name.
        self.bindings: dict[str, Group] = {}
        self.outbox: deque[bytes] = deque()
        self.outbox_bytes = 0
        self._outbox_lock = threading.Lock()
        self.targets: dict[bytes, Worker] = {}
        self._by_identity: dict[bytes, tuple[Worker, Incarnation]] = {}
        self._by_pid: dict[int, tuple[Worker, Incarnation]] = {}
        self._free_slots = list(range(slots.size - 1, -1, -1))
        #: Set when shutdown begins: nothing is respawned after that.
        self.closing = False
        self.rejected = 0
        #: Frames refused because no verified worker sent them (strangers, wrong tokens, before a Hello).
        self.refused = 0
        #: Connections to the workers' endpoint refused at the handshake (wrong credentials).
        self.denied = 0
        #: Incarnations the fork server has yet to report on, by (worker, incarnation number).
        self._forking: dict[tuple[str, int], tuple[Worker, Incarnation]] = {}
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
        #: Death seen → next incarnation ready, for workers respawned by their policy (read at scrape time).
        self.respawn_latency = Histogram(RESPAWN_BUCKETS)
        # Last: the parts that work on these books need them complete.
        self._compose()

    def _compose(self) -> None:
        """Make the parts that work on the books (the Supervisor's ingest, spawning, exits, ...)."""

    def _hub(self) -> Hub:
        hub = self.hub
        assert hub is not None, "the runtime sets the hub before anything runs on it"
        return hub

    def _retire(self, worker: Worker, inc: Incarnation) -> None:
        """Forget an ended incarnation's routing id, pid-less entries and slot (its late frames are counted)."""
        self._by_identity.pop(inc.identity, None)
        self._forking.pop((worker.name, inc.number), None)
        if inc.hello:
            self._retired[inc.identity] = None
            if len(self._retired) > _RETIRED:
                del self._retired[next(iter(self._retired))]
        self.targets.pop(inc.identity, None)
        if self.hub is not None:
            self.hub.forget(inc.identity)
        self._free_slots.append(inc.slot)

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

    def _advance_group(self, worker: Worker) -> None:
        """Move the restart plan of ``worker``'s group on, if one is under way (a member changed state)."""
        if worker.group is not None and (plan := self.groups[worker.group].plan) is not None:
            plan.advance()
        for binding in list(self.bindings.values()):
            if binding.plan is not None and worker.name in binding.members:
                binding.plan.advance()

    def _settle_stopped(self, worker: Worker) -> None:
        """The worker is stopped for good: say so to whoever waits for it."""
        if worker.state is not WorkerState.STOPPED:
            worker.move(WorkerState.STOPPED)
        self.calls.down(worker)
        worker.done.set()

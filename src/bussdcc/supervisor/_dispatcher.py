"""The dispatch thread: it runs, in arrival order, everything the hub thread hands over.

The hub thread only moves frames; what it receives (workers' messages and state
writes) and what the supervisor says (lifecycle messages) is dispatched here.
So a handler that blocks (calling a device, waiting on a lock another thread
holds across its own dispatch) never stops the hub from routing replies or
noticing deaths, and a handler is never re-entered by the hub.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ._flow import DISPATCH_BYTES, DISPATCH_HARD_BYTES, weigh

#: Items waiting for dispatch above which the hub stops reading from workers, besides their
#: weight (_flow): small, so that a worker's ready or goodbye waits behind a few thousand at most.
_HIGH_ITEMS = 4096


class Dispatcher:
    """A FIFO of jobs and the thread that runs them; bounded by back-pressure on the hub."""

    def __init__(self, on_room: Callable[[], None]) -> None:
        self._jobs: deque[tuple[Callable[[], None], int, int]] = deque()
        self._cond = threading.Condition()
        self._items = 0
        self._bytes = 0
        self._running = True
        self._throttled = False
        self._on_room = on_room
        self._waiting = 0
        #: Jobs posted and jobs finished so far: a ticket is the number of jobs posted at some point.
        self.posted = 0
        self._completed = 0
        self._done = threading.Condition()
        self._done_waiters = 0
        self.thread = threading.Thread(target=self._main, name="bussdcc-dispatch", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    @property
    def on_thread(self) -> bool:
        """Whether the caller is the dispatch thread."""
        return threading.current_thread() is self.thread

    def load(self) -> tuple[int, int]:
        """Items and bytes waiting for the dispatch thread now (any thread; for metrics)."""
        return self._items, self._bytes

    def post(self, job: Callable[[], None], items: int = 1, size: int = 0) -> None:
        """Queue ``job`` (any thread, never blocks); ``items`` and ``size`` weigh it for back-pressure."""
        with self._cond:
            self._jobs.append((job, items, size))
            self._items += items
            self._bytes += weigh(items, size)
            self.posted += 1
            self._cond.notify()

    def full(self) -> bool:
        """Whether the hub should stop reading from workers until the backlog shrinks."""
        if self._waiting:
            # A handler waits on a reply only the hub can read: nothing drains meanwhile, so the
            # hub reads on, up to a hard bound (past it, that call ends at its own timeout).
            return self._bytes >= DISPATCH_HARD_BYTES
        if self._items >= _HIGH_ITEMS or self._bytes >= DISPATCH_BYTES:
            self._throttled = True
        return self._throttled

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Mark the dispatch thread as blocked on the hub (a device call): the hub reads on meanwhile."""
        self._waiting += 1
        self._on_room()
        try:
            yield
        finally:
            self._waiting -= 1

    def barrier(self, timeout: float | None) -> bool:
        """Wait until everything queued before now has been dispatched (False on timeout)."""
        return self.wait_for(self.posted, timeout)

    def wait_for(self, ticket: int, timeout: float | None) -> bool:
        """Wait until the first ``ticket`` jobs have been dispatched (False on timeout)."""
        if self.on_thread:
            return True
        with self._done:
            self._done_waiters += 1
            try:
                return self._done.wait_for(lambda: self._completed >= ticket or not self.thread.is_alive(), timeout)
            finally:
                self._done_waiters -= 1

    def stop(self) -> None:
        """Run what is queued, then end the thread (a handler that never returns holds this up)."""
        with self._cond:
            self._running = False
            self._cond.notify()
        if self.thread.is_alive() and not self.on_thread:
            self.thread.join()

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and self._running:
                    self._cond.wait()
                if not self._jobs:
                    break
                job, items, size = self._jobs.popleft()
            try:
                job()
            except BaseException:
                # A bug (or a sys.exit) in one job must not end dispatch for the rest.
                traceback.print_exc()
            with self._done:
                self._completed += 1
                if self._done_waiters:
                    self._done.notify_all()
            with self._cond:
                self._items -= items
                self._bytes -= weigh(items, size)
                room = self._throttled and self._items < _HIGH_ITEMS // 2 and self._bytes < DISPATCH_BYTES // 2
                if room:
                    self._throttled = False
            if room:
                self._on_room()
        with self._done:
            self._done.notify_all()  # the thread is ending: nobody waits on it any longer

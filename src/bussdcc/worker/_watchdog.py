"""What a worker tells its parent's watchdog: heartbeats, and what it is busy with since when.

Both go to shared memory, never through the socket, so they cost a store each
and still reach the parent when the worker's I/O is stuck. The heartbeat comes
from a thread of its own: it needs the GIL, so it stops when native code holds
the GIL, which is exactly the hang the parent must see.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..kernel._boundary import ACTIVITIES, WorkerSpec


class Watchdog:
    """A worker's side of the parent's watchdog."""

    def __init__(self, spec: WorkerSpec, interval: float) -> None:
        self._slots = spec.slots
        self._slot = spec.slot
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Beat once: the parent judges heartbeats only once the worker is ready (see :meth:`ready`)."""
        self.beat()

    def beat(self) -> None:
        """Beat once, now (just before Ready: the parent may judge the heartbeat as soon as Ready arrives)."""
        self._slots.pulse(self._slot, time.monotonic())

    def ready(self) -> None:
        """Start the heartbeat thread (unless heartbeats are off), once Ready is sent: not on the way to it."""
        self._slots.pulse(self._slot, time.monotonic())
        if self._interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="bussdcc-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            self._slots.pulse(self._slot, time.monotonic())

    def stop(self) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @contextmanager
    def busy(self, activity: str, limit: float) -> Iterator[None]:
        """Mark the body as ``activity``, which the parent allows ``limit`` seconds."""
        self._slots.busy(self._slot, ACTIVITIES.index(activity), time.monotonic(), limit)
        try:
            yield
        finally:
            self._slots.busy(self._slot, 0, 0.0, 0.0)

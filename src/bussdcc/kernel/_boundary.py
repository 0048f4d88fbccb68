"""What the parent and a worker share besides frames: the spec and the counter slots.

The slot table is a shared memory map created by the parent before it forks
the fork server, so every forked worker inherits it. Backed by a file in the
run directory, it is also open to workers that were not forked from it (a
fresh interpreter, a standalone worker). A worker counts there what it sent;
after a crash the parent compares that with what it received, so nothing a
dead worker emitted disappears without being counted.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["ACTIVITIES", "SlotTable", "WorkerSpec"]

# items sent, control frames sent, event progress, heartbeat, busy since, busy limit, busy kind.
# Native byte order: the item count is also written through a memoryview (see ``item_counter``).
_SLOT: Final = struct.Struct("=QQddddQ")
_COUNTS: Final = struct.Struct("=QQ")
_PROGRESS: Final = 16
_ALIVE: Final = 24
_BUSY: Final = 32
_STRIDE: Final = 64

#: What a worker is busy with, as recorded by :meth:`SlotTable.busy` (index = code).
ACTIVITIES: Final = ("idle", "start", "tick", "handle_event", "stop")


#: Workers a runtime runs at once: one slot each in the shared table (a pool is never larger).
WORKER_SLOTS: Final = 1024


class SlotTable:
    """Fixed-size table of per-worker counters and watchdog times in shared memory.

    Times are ``time.monotonic()`` readings, which the parent and its workers
    share (one clock per boot on Linux).
    """

    def __init__(self, slots: int = WORKER_SLOTS, path: Path | None = None) -> None:
        self.size = slots
        self._views: list[memoryview] = []
        if path is None:
            self._map = mmap.mmap(-1, slots * _STRIDE, flags=mmap.MAP_SHARED)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < slots * _STRIDE:
                os.ftruncate(fd, slots * _STRIDE)
            self._map = mmap.mmap(fd, slots * _STRIDE, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)

    def reset(self, slot: int) -> None:
        """Zero a slot before a new incarnation uses it."""
        _SLOT.pack_into(self._map, slot * _STRIDE, 0, 0, 0.0, 0.0, 0.0, 0.0, 0)

    def write(self, slot: int, items: int, controls: int) -> None:
        """Record how many items and control frames a worker has sent."""
        _COUNTS.pack_into(self._map, slot * _STRIDE, items, controls)

    def item_counter(self, slot: int) -> memoryview:
        """The item count of ``slot`` alone, as a one-element view: one store per item sent (the hot path)."""
        view = memoryview(self._map)[slot * _STRIDE : slot * _STRIDE + 8].cast("Q")
        self._views.append(view)
        return view

    def read(self, slot: int) -> tuple[int, int]:
        """Return ``(items, controls)`` sent by the worker in ``slot``."""
        items, controls = _COUNTS.unpack_from(self._map, slot * _STRIDE)
        return items, controls

    def beat(self, slot: int, when: float) -> None:
        """Record that the worker in ``slot`` took an event at ``when``."""
        struct.pack_into("=d", self._map, slot * _STRIDE + _PROGRESS, when)

    def progress(self, slot: int) -> float:
        """When the worker in ``slot`` last took an event (0 if never)."""
        value: float = struct.unpack_from("=d", self._map, slot * _STRIDE + _PROGRESS)[0]
        return value

    def pulse(self, slot: int, when: float) -> None:
        """Record a heartbeat of the worker in ``slot``."""
        struct.pack_into("=d", self._map, slot * _STRIDE + _ALIVE, when)

    def heartbeat(self, slot: int) -> float:
        """When the worker in ``slot`` last sent a heartbeat (0 if never)."""
        value: float = struct.unpack_from("=d", self._map, slot * _STRIDE + _ALIVE)[0]
        return value

    def busy(self, slot: int, activity: int, since: float, limit: float) -> None:
        """Record that the worker began ``ACTIVITIES[activity]`` at ``since``, allowed ``limit`` seconds.

        ``activity`` 0 (idle) clears it.
        """
        # The limit and kind go first, the start time last: a reader that sees the
        # new start time also sees its limit.
        struct.pack_into("=dQ", self._map, slot * _STRIDE + _BUSY + 8, limit, activity)
        struct.pack_into("=d", self._map, slot * _STRIDE + _BUSY, since if activity else 0.0)

    def activity(self, slot: int) -> tuple[str, float, float]:
        """``(activity, since, limit)`` of the worker in ``slot`` (since is 0 when idle)."""
        since, limit, kind = struct.unpack_from("=ddQ", self._map, slot * _STRIDE + _BUSY)
        if not since or kind >= len(ACTIVITIES):
            return "idle", 0.0, 0.0
        return ACTIVITIES[kind], since, limit

    def close(self) -> None:
        """Unmap the table."""
        for view in self._views:
            view.release()  # a view still exported would keep the map from closing
        self._map.close()


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a freshly forked worker needs to know about itself."""

    name: str
    role: str  # "service" or "device"
    incarnation: int
    endpoint: str
    slot: int
    slots: SlotTable
    parent_pid: int
    #: The ZeroMQ routing id the parent chose for this incarnation (random: nobody else can predict it).
    identity: bytes
    #: The incarnation's secret, proved in its ``Hello``: only the process the parent made knows it.
    token: bytes = field(repr=False)
    #: Wait after the Hello for the parent's Go before running the component (forked ahead at boot).
    gated: bool = False

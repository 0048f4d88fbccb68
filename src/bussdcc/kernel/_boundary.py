"""What the parent and a worker share besides frames: the spec and the counter slots.

The slot table is an anonymous shared memory map created by the parent before
it forks the fork server, so every worker inherits it. A worker counts there
what it sent; after a crash the parent compares that with what it received,
so nothing a dead worker emitted disappears without being counted.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["SlotTable", "WorkerSpec"]

_SLOT: Final = struct.Struct("<QQd")  # items sent, control frames sent, heartbeat
_STRIDE: Final = 64


class SlotTable:
    """Fixed-size table of per-worker counters in shared memory."""

    def __init__(self, slots: int = 1024) -> None:
        self.size = slots
        self._map = mmap.mmap(-1, slots * _STRIDE, flags=mmap.MAP_SHARED)

    def reset(self, slot: int) -> None:
        """Zero a slot before a new incarnation uses it."""
        _SLOT.pack_into(self._map, slot * _STRIDE, 0, 0, 0.0)

    def write(self, slot: int, items: int, controls: int) -> None:
        """Record how many items and control frames a worker has sent."""
        struct.pack_into("<QQ", self._map, slot * _STRIDE, items, controls)

    def beat(self, slot: int, when: float) -> None:
        """Record that the worker in ``slot`` made progress at ``when`` (``time.monotonic()``)."""
        struct.pack_into("<d", self._map, slot * _STRIDE + 16, when)

    def heartbeat(self, slot: int) -> float:
        """When the worker in ``slot`` last recorded progress (``time.monotonic()``, 0 if never)."""
        value: float = struct.unpack_from("<d", self._map, slot * _STRIDE + 16)[0]
        return value

    def read(self, slot: int) -> tuple[int, int]:
        """Return ``(items, controls)`` sent by the worker in ``slot``."""
        items, controls, _ = _SLOT.unpack_from(self._map, slot * _STRIDE)
        return items, controls

    def close(self) -> None:
        """Unmap the table."""
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

    @property
    def identity(self) -> bytes:
        """The worker's ZeroMQ routing id: unique per incarnation."""
        return f"{self.name}#{self.incarnation}".encode()

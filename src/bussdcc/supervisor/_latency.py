"""Latency histograms kept by the supervisor: fixed buckets, one increment per observation.

Written on one thread (the hub thread), read at scrape time from another: a reader
copies the bucket list in one C call and derives the count from it, so the
``+Inf`` bucket always equals the count it reports. No lock is taken.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

#: Respawn latency (death seen → next incarnation ready), seconds: it includes the backoff.
RESPAWN_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Device calls (routed → answered), seconds.
CALL_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket (upper bounds inclusive, as Prometheus has them)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (one writer thread only)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[list[tuple[float, int]], int, float]:
        """Cumulative (upper bound, count) pairs ending with +Inf, the count and the sum (any thread)."""
        counts = self.counts.copy()
        total = self.sum
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append((bound, running))
        return out, running, total

"""The hub thread's clock: one-shot timers and periodic jobs, and the rule that keeps them alive.

A periodic job of the supervisor (the watchdog, the fd watch, the run-directory
check) must never end because it raised once: its fault is reported once (a
``runtime.fault``) until it works again, and it runs again next period. A
one-shot timer's fault is reported the same way and holds up no other timer.
Everything here runs on the hub thread.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
import traceback
from collections.abc import Callable

from ..errors import BootError


class Timer:
    """A cancellable callback scheduled on the hub thread."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback."""
        self.cancelled = True


class Periodic:
    """A job the hub runs every period until cancelled, or until it returns False."""

    __slots__ = ("cancelled", "done", "timer")

    def __init__(self) -> None:
        self.cancelled = False
        self.done = False
        self.timer: Timer | None = None

    def cancel(self) -> None:
        """Run it no more."""
        self.cancelled = True
        if self.timer is not None:
            self.timer.cancel()


class Timers:
    """Timers ordered by when they are due (hub thread only)."""

    def __init__(self, on_fault: Callable[[str, str, str], None]) -> None:
        """``on_fault(part, kind, error)`` reports a fault of a timer or job (once until it recovers)."""
        self._on_fault = on_fault
        self._heap: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._faults: dict[str, str] = {}  # part -> the fault last reported for it, until it recovers

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the hub thread after ``delay`` seconds (hub thread only)."""
        return self._call_at(time.monotonic() + delay, fn)

    def call_on_tick(self, period: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` at the next multiple of ``period`` on the monotonic clock, with the periodic jobs due then."""
        return self._call_at(_next_tick(period), fn)

    def _call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(when, fn)
        heapq.heappush(self._heap, (timer.when, next(self._counter), timer))
        return timer

    def every(self, period: float, fn: Callable[[], bool | None], part: str) -> Periodic:
        """Run ``fn`` every ``period`` seconds (hub thread only) until it returns False or is cancelled.

        An exception of ``fn`` never ends the job: it is reported once (``runtime.fault``
        for ``part``) and ``fn`` runs again next period, like any other time.
        """
        job = Periodic()

        def run() -> None:
            keep = True
            try:
                keep = fn() is not False
                self.recovered(part)
            except BootError:
                raise  # the fork server is gone: the loop's own handling, not a fault of this job
            except Exception as exc:
                self.fault(part, type(exc).__name__, exc)
            finally:
                if keep and not job.cancelled:
                    job.timer = self._call_at(_next_tick(period), run)
                else:
                    job.done = True

        job.timer = self._call_at(_next_tick(period), run)
        return job

    def fault(self, part: str, kind: str, error: BaseException | str) -> None:
        """Report a fault of the supervisor's own machinery once, until ``part`` recovers (hub thread only)."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self._faults.get(part) == text:
            return
        self._faults[part] = text
        try:
            self._on_fault(part, kind, text)
        except Exception:
            traceback.print_exc()  # reporting must never be what ends the job

    def recovered(self, part: str) -> None:
        """``part`` works again: its next fault is news (hub thread only)."""
        if self._faults:
            self._faults.pop(part, None)

    def next_timeout(self) -> int | None:
        """Milliseconds until the next timer is due (None: no timer)."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(0, int((self._heap[0][0] - time.monotonic()) * 1000) + 1)

    def run_due(self) -> None:
        """Run every timer that is due; a fault of one is reported and holds up none of the others."""
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            try:
                timer.fn()
            except BootError:
                raise
            except Exception as exc:
                # One timer's fault must not hold up the others due now, nor go unsaid.
                name = getattr(timer.fn, "__qualname__", "a timer")
                self.fault("timers", type(exc).__name__, f"{name}: {type(exc).__name__}: {exc}")


def _next_tick(period: float) -> float:
    """The next multiple of ``period`` on the monotonic clock.

    Periodic jobs run on one grid, not each from when it began: jobs of the same period (or of
    multiples of it) are due at the very same instant and run in one wake-up of the hub.
    """
    return (math.floor(time.monotonic() / period) + 1) * period

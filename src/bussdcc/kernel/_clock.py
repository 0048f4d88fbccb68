"""Time, behind a protocol so that tests and simulations can supply their own."""

from __future__ import annotations

import datetime as _dt
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["ClockProtocol", "ManualClock", "SystemClock"]


@runtime_checkable
class ClockProtocol(Protocol):
    """What the kernel needs of a clock."""

    def now_utc(self) -> _dt.datetime:
        """Wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def uptime(self) -> float:
        """Seconds since the clock was created."""
        ...

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        """Wait ``seconds``; return True if ``cancel`` was set first."""
        ...


class SystemClock:
    """The real clock."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def now_utc(self) -> _dt.datetime:
        """Wall-clock time, timezone-aware UTC."""
        return _dt.datetime.now(_dt.UTC)

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def uptime(self) -> float:
        """Seconds since this clock was created."""
        return time.monotonic() - self._start

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        """Wait ``seconds``; return True if ``cancel`` was set first."""
        if cancel is None:
            time.sleep(max(0.0, seconds))
            return False
        return cancel.wait(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to: ``advance()`` wakes sleepers whose time has come."""

    def __init__(self, start: _dt.datetime | None = None) -> None:
        self._wall = start or _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC)
        self._now = 0.0
        self._cond = threading.Condition()

    def now_utc(self) -> _dt.datetime:
        """The simulated wall-clock time."""
        with self._cond:
            return self._wall + _dt.timedelta(seconds=self._now)

    def monotonic(self) -> float:
        """Simulated seconds since creation."""
        with self._cond:
            return self._now

    def uptime(self) -> float:
        """Simulated seconds since creation."""
        return self.monotonic()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake the sleepers that are due."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        """Block until ``advance()`` has moved time by ``seconds``, or ``cancel`` is set."""
        with self._cond:
            deadline = self._now + seconds
            while self._now < deadline:
                if cancel is not None and cancel.is_set():
                    return True
                # The short wait only notices `cancel`; time itself moves by advance().
                self._cond.wait(0.05 if cancel is not None else None)
            return bool(cancel is not None and cancel.is_set())

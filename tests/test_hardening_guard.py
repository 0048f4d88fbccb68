"""The supervisor's own machinery under environmental faults: backoff arithmetic, periodic jobs, fds, control."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bussdcc import Context, Event, Message, Process, Runtime, Service
from bussdcc.kernel import _builtin as m
from bussdcc.supervisor._backoff import backoff_delay

# ---- class 3: the backoff is capped arithmetic ------------------------------------------


@given(
    streak=st.integers(min_value=0, max_value=10**12),
    initial=st.floats(min_value=0.0, max_value=1e300),
    maximum=st.floats(min_value=0.0, max_value=1e300),
    jitter=st.floats(min_value=0.75, max_value=1.25),
)
def test_the_backoff_is_defined_for_any_streak(streak: int, initial: float, maximum: float, jitter: float) -> None:
    delay = backoff_delay(streak, initial, maximum, jitter)
    assert 0.0 <= delay <= maximum
    if streak == 0:
        assert delay == 0.0


def test_the_backoff_doubles_then_stays_at_its_maximum() -> None:
    assert [backoff_delay(n, 0.05, 2.0) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    for streak in (1024, 1025, 1026, 10**6, 10**18):
        assert backoff_delay(streak, 0.05, 2.0) == 2.0
        assert backoff_delay(streak, 1e-300, 5.0, 1.25) == 5.0
    assert backoff_delay(1025, 0.0, 2.0) == 0.0


class _Streaks(Process):
    """Remembers the longest failure streak announced for its worker (without keeping every event)."""

    name = "streaks"

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.attempt = 0
        self.started_after = 0  # spawns announced after the longest streak so far
        self.gave_up: list[str] = []
        self._cond = threading.Condition()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        msg = evt.payload
        with self._cond:
            if isinstance(msg, m.WorkerBackoff) and msg.worker == self.worker:
                self.attempt = max(self.attempt, msg.attempt)
            elif isinstance(msg, m.WorkerGaveUp) and msg.worker == self.worker:
                self.gave_up.append(msg.reason)
            self._cond.notify_all()

    def wait_attempt(self, attempt: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.attempt < attempt and not self.gave_up:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.attempt


class _DiesAtOnce(Service):
    """Every incarnation ends before it is ready."""

    name = "dies"
    interval = 3600.0
    max_restarts = 10**9
    restart_window = 3600.0
    backoff_initial = 0.0001
    backoff_max = 0.001

    def start(self, ctx: Context) -> None:
        os._exit(3)


@pytest.mark.timeout(300)
def test_a_worker_failing_over_a_thousand_times_in_a_row_is_still_respawned() -> None:
    watcher = _Streaks("dies")
    rt = Runtime()
    rt.register_process(watcher)
    rt.register_service(_DiesAtOnce())
    rt.boot()
    try:
        reached = watcher.wait_attempt(1040, timeout=240)
        assert not watcher.gave_up, watcher.gave_up
        assert reached >= 1040, f"respawns stopped after {reached} failures in a row"
    finally:
        rt.shutdown()

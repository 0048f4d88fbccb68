"""Long chaos run (excluded by default; `make soak`): random crashes for a while, then a clean stop."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bussdcc import Event, Message, WorkerState

from ._helpers import MakeRuntime, Ping

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from crashy_driver import Controller, FlakySensor

SECONDS = float(os.environ.get("BUSSDCC_SOAK_SECONDS", "60"))


def _numbered(n: int) -> Callable[[Event[Message]], bool]:
    return lambda e: e.payload.to_dict()["n"] == n


@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 120)
def test_chaos_for_a_while_then_a_clean_stop(make_runtime: MakeRuntime) -> None:
    sensor = FlakySensor(id="sensor")
    sensor.max_restarts = sensor.max_restarts * 100
    ctrl = Controller()
    ctrl.max_restarts = ctrl.max_restarts * 100
    rt, rec = make_runtime("soak", sensor, ctrl)
    deadline = time.monotonic() + SECONDS
    n = 0
    while time.monotonic() < deadline:
        n += 1
        rt.emit(Ping(n=n))
        rec.wait_for("test.ping", _numbered(n), timeout=30)
        time.sleep(0.05)
        rec.trim(1000)  # keep memory flat over a long run
    states = {w.name: w.state for w in rt.workers()}
    assert all(s in (WorkerState.RUNNING, WorkerState.STARTING, WorkerState.BACKOFF) for s in states.values())
    rt.shutdown()
    assert sum(rt.stats().restarts.values()) > 0

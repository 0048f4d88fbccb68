"""Nothing lost on a graceful stop, even mid-flood; the parent's memory stays bounded under a flood."""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
import time
from typing import Any

import psutil

from bussdcc import Context, Event, Message, Process, Runtime, Service, message

from ._helpers import Recorder, Seq, wait_until

N = 50_000


class Flood(Service):
    name = "flood"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        for i in range(N):
            ctx.emit(Seq(i=i))


class Counting(Process):
    """Counts Seq messages and checks their order without keeping them."""

    name = "counting"

    def __init__(self) -> None:
        self.count = 0
        self.in_order = True
        self.first = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            self.in_order &= evt.payload.i == self.count
            self.count += 1
            self.first.set()


def test_shutdown_during_a_flood_loses_nothing() -> None:
    counting = Counting()
    rec = Recorder("lifecycle")
    rt = Runtime(name="flood")
    rt.register_process(counting)
    rt.register_process(rec)
    rt.register_service(Flood())
    rt.boot()
    assert counting.first.wait(10)
    assert counting.count < N, "the shutdown must start while the worker is still emitting"
    rt.shutdown()
    assert counting.count == N and counting.in_order
    (exited,) = [e.payload for e in rec.events if isinstance(e.payload, message.WorkerExited)]
    assert exited.emitted == exited.dispatched == N and exited.lost == 0 and not exited.abnormal


# Created before boot so that the worker, forked from this process, shares it.
_progress: Any = multiprocessing.Value(ctypes.c_long, 0, lock=False)
BIG = 200_000
PAD = "x" * 1000


class BigFlood(Service):
    name = "bigflood"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        for i in range(BIG):
            ctx.emit(Seq(i=i, pad=PAD))
            _progress.value = i + 1


class Gate(Process):
    """Blocks dispatch on the first Seq until the test opens the gate."""

    name = "gate"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.blocked = threading.Event()
        self.count = 0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            self.blocked.set()
            self.gate.wait()
            self.count += 1


def _stalled(probe: list[tuple[float, int]]) -> bool:
    # True once the worker's progress has not moved for 0.3 s.
    now, value = time.monotonic(), _progress.value
    if value != probe[-1][1]:
        probe.append((now, value))
        return False
    return now - probe[-1][0] >= 0.3


def test_back_pressure_reaches_the_emitting_worker_and_parent_memory_stays_bounded() -> None:
    gate = Gate()
    rt = Runtime(name="bounded")
    rt.register_process(gate)
    rt.register_service(BigFlood())
    me = psutil.Process()
    _progress.value = 0
    with rt:
        before = me.memory_info().rss
        assert gate.blocked.wait(10)
        probe = [(time.monotonic(), -1)]
        wait_until(lambda: _stalled(probe), timeout=20, what="the flooding worker to block")
        blocked_at = _progress.value
        grown = me.memory_info().rss - before
        payload = BIG * len(PAD)
        assert blocked_at < BIG // 2, f"worker ran ahead to {blocked_at} while dispatch was blocked"
        assert grown < payload // 4, f"parent grew {grown} bytes for a {payload}-byte flood"
        print(f"worker blocked after {blocked_at} of {BIG}; parent grew {grown / 1e6:.1f} MB")
        gate.gate.set()
        wait_until(lambda: gate.count == BIG, timeout=60, what="the whole flood to be dispatched")

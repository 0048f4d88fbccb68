"""The parent's memory stays bounded when a Process floods a Service that is behind, and shutdown still ends."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil
import pytest

from bussdcc import Context, Event, Message, Process, Runtime, Service
from bussdcc.supervisor._flow import OUTBOX_BYTES

from ._helpers import Recorder, Seq

#: How long a flood lasts at most, and how many messages it sends at most.
FLOOD_SECONDS = 20.0
FLOOD_COUNT = 2_000_000
#: Growth of the parent allowed during a flood (about 6 MB measured; unbounded queues grew
#: by 100-200 MB here on a fast machine, about 80 bytes per message).
GROWTH = 64 * 1024 * 1024


@dataclass(slots=True, frozen=True)
class Go(Message):
    """Starts the flood."""

    name = "test.go"


class Trigger(Service):
    """Sends Go once, from a worker: the flood then runs on the parent's dispatch thread."""

    name = "trigger"
    interval = 3600.0

    def tick(self, ctx: Context) -> None:
        ctx.emit(Go())


class Flooder(Process):
    """On Go, emits small messages in a loop from its handler."""

    name = "flooder"

    def __init__(self) -> None:
        self.emitted = 0
        self.started = threading.Event()
        self.done = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if not isinstance(evt.payload, Go):
            return
        self.started.set()
        deadline = time.monotonic() + FLOOD_SECONDS
        try:
            for i in range(FLOOD_COUNT):
                ctx.emit(Seq(i=i))
                self.emitted += 1
                if i % 1000 == 0 and time.monotonic() > deadline:
                    break
        finally:
            self.done.set()


class Counter(Process):
    """Counts the Seq messages dispatched in the parent."""

    name = "counter"

    def __init__(self) -> None:
        self.count = 0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            self.count += 1


class Lifecycle(Recorder):
    """Records everything but the flood."""

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if not isinstance(evt.payload, Seq):
            super().handle_event(ctx, evt)


class Slow(Service):
    """Takes every event, slowly."""

    name = "slow"
    interval = 3600.0
    stop_timeout = 2.0
    kill_timeout = 1.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            time.sleep(0.001)


class Stuck(Service):
    """Takes the first numbered event and never returns from it."""

    name = "stuck"
    interval = 3600.0
    restart = "temporary"
    event_timeout = 5.0
    stop_timeout = 1.0
    kill_timeout = 1.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            threading.Event().wait()


class _Peak:
    """Samples the parent's RSS, and what waits for the Services, until stopped; keeps the largest values."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._me = psutil.Process()
        self.base = self._me.memory_info().rss
        self.peak = self.base
        self.outbox = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._me.memory_info().rss)
            self.outbox = max(self.outbox, self._rt.stats().outbox_bytes)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


def _shutdown_within(rt: Runtime, seconds: float) -> None:
    stopper = threading.Thread(target=rt.shutdown, name="test-shutdown", daemon=True)
    stopper.start()
    stopper.join(seconds)
    assert not stopper.is_alive(), f"shutdown did not finish within {seconds:g}s"
    assert rt.wait(timeout=0)


@pytest.mark.timeout(300)
def test_a_handler_flooding_a_slow_service_keeps_the_parent_small_and_shutdown_ends() -> None:
    flooder, counter = Flooder(), Counter()
    rt = Runtime(name="memflood")
    rt.register_process(flooder)
    rt.register_process(counter)
    rt.register_service(Slow())
    peak: _Peak | None = None
    try:
        peak = _Peak(rt)
        rt.register_service(Trigger())
        rt.boot()
        assert flooder.started.wait(20), "the flood began"
        assert flooder.done.wait(FLOOD_SECONDS + 150), "the flood ended"
        grown = peak.stop()
        print(f"emitted {flooder.emitted}; parent grew {grown / 1e6:.1f} MB; outbox peak {peak.outbox}")
        assert grown < GROWTH, f"the parent grew {grown / 1e6:.0f} MB during the flood"
        # One item per emitting thread may go past the bound before its emitter waits.
        assert peak.outbox < 2 * OUTBOX_BYTES, f"{peak.outbox} bytes waited for the Services"
        assert counter.count == flooder.emitted, "every message was dispatched in the parent"
    finally:
        if peak is not None:
            peak.stop()
        _shutdown_within(rt, 60)


@pytest.mark.timeout(180)
def test_a_stuck_consumer_is_killed_as_hung_and_the_flood_goes_on_with_everything_accounted_for() -> None:
    flooder, counter, rec = Flooder(), Counter(), Lifecycle("lifecycle")
    rt = Runtime(name="memstuck")
    rt.register_process(flooder)
    rt.register_process(counter)
    rt.register_process(rec)
    rt.register_service(Stuck())
    peak: _Peak | None = None
    try:
        peak = _Peak(rt)
        rt.register_service(Trigger())
        rt.boot()
        assert flooder.started.wait(20), "the flood began"
        (exited,) = rec.wait_for("worker.exited", lambda e: e.payload.to_dict()["worker"] == "stuck", timeout=60)
        assert exited.payload.to_dict()["cause"] == "hung", exited.payload
        assert flooder.done.wait(FLOOD_SECONDS + 150), "the flood ended once the stuck consumer was gone"
        grown = peak.stop()
        print(f"emitted {flooder.emitted}; parent grew {grown / 1e6:.1f} MB; outbox peak {peak.outbox}")
        assert grown < GROWTH, f"the parent grew {grown / 1e6:.0f} MB during the flood"
        # One item per emitting thread may go past the bound before its emitter waits.
        assert peak.outbox < 2 * OUTBOX_BYTES, f"{peak.outbox} bytes waited for the Services"
        assert counter.count == flooder.emitted, "every message was dispatched in the parent"
        info = exited.payload.to_dict()
        assert info["emitted"] == info["dispatched"] + info["lost"]
        stats = rt.stats()
        assert stats.dispatched >= flooder.emitted and stats.undelivered == 0
    finally:
        if peak is not None:
            peak.stop()
        _shutdown_within(rt, 60)

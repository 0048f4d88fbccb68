"""Where a message's time goes in the parent: each step of the per-message path, timed on its own.

Each step is the real function of the runtime, called in a loop on this thread (the best of REPEAT
loops of K calls, less the loop's own cost), beside the whole path measured the same way: a worker's
message as the dispatch thread handles it (``Ingest.apply`` for a batch), and ``rt.emit`` in-process.
The internals it reaches are today's; a step whose function has moved prints "n/a".
Usage: ``python bench/steps.py [K]``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(__file__))

from bussdcc import Context, Event, Message, Process, Runtime

K = int(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else 20_000
REPEAT = 7


@dataclass(slots=True, frozen=True)
class Sample(Message):
    """A typical small telemetry message."""

    name = "bench.steps.sample"
    i: int
    value: float
    unit: str


class Count(Process):
    name = "count"

    def __init__(self) -> None:
        self.n = 0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Sample):
            self.n += 1


def per_call(fn: Callable[[], object], k: int = K) -> float:
    """Nanoseconds per call of ``fn``: the best of REPEAT loops, less an empty call's cost."""

    def loop(f: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(REPEAT):
            t0 = time.perf_counter_ns()
            for _ in range(k):
                f()
            best = min(best, (time.perf_counter_ns() - t0) / k)
        return best

    return max(0.0, loop(fn) - loop(lambda: None))


Step = tuple[str, Callable[[], object] | None, int]


def step(label: str, make: Callable[[], Callable[[], object]], per: int = 1) -> Step:
    """The step ``make()`` returns, called once to check it (``per``: messages one call handles); None if it moved."""
    try:
        fn = make()
        fn()
    except (AttributeError, ImportError, TypeError, KeyError) as exc:
        print(f"  {label}: n/a ({type(exc).__name__}: {exc})")
        return label, None, per
    return label, fn, per


def parent_steps(rt: Runtime, count: Count) -> dict[str, list[Step]]:
    """The steps of the per-message path in the parent, by path, on a booted ``rt`` with ``count`` registered."""
    from bussdcc.kernel import protocol as p

    r: Any = rt  # private parts: typed loosely, so a rename shows as n/a rather than breaking the script
    dispatch = r._dispatch
    parts = r._parts
    msg = Sample(i=1, value=21.5, unit="C")
    now = dt.datetime.now(dt.UTC)
    ts = now.timestamp()
    item = p.encode_envelope(msg, ts, "w")
    raw = msgspec.Raw(item)
    env: Any = p.decode(raw, p.ITEMS)
    evt = p.envelope_event(env, "w")
    batch = 256
    frame = p.encode(p.Batch(1, [msgspec.Raw(item)] * batch))
    raws = [msgspec.Raw(item)] * batch
    lock = threading.RLock()
    local = threading.local()

    def locked() -> None:
        with lock:
            pass

    def depth() -> None:
        local.depth = getattr(local, "depth", 0) + 1
        local.depth -= 1

    worker = [
        step("whole: Ingest.apply, per message of a 256-item batch", lambda: lambda: parts.supervisor._ingest.apply("w", raws), batch),
        step("hub: decode the Batch frame (per message)", lambda: lambda: p.decode(frame, p.WORKER_FRAMES), batch),
        step("decode the item into an Envelope", lambda: lambda: p.decode(raw, p.ITEMS)),
        step("health watch: saw(worker, name)", lambda: lambda: parts.supervisor._health.saw("w", env.name)),
        step("decode the body into its class", lambda: lambda: p.decode_message(env.name, env.body)),
        step("timestamp → datetime", lambda: lambda: dt.datetime.fromtimestamp(ts, tz=dt.UTC)),
        step("Event(...)", lambda: lambda: Event(msg, now, "w")),
        step("bytes(raw) (the item kept for outbox and control)", lambda: lambda: bytes(raw)),
        step("Dispatch.dispatch(evt, item), all of it", lambda: lambda: dispatch.dispatch(evt, item)),
        step("  the locked part (_dispatch_locked)", lambda: lambda: dispatch._dispatch_locked(evt, item, parts, 0, 0, 0.0)),
        step("    RLock acquire + release", lambda: locked),
        step("    EventBus.publish, no subscriber", lambda: lambda: dispatch.events.publish(evt)),
        step("    the Process's handle_event", lambda: lambda: count.handle_event(rt.ctx, evt)),
        step("    time.time_ns() (the dispatch stamp)", lambda: time.time_ns),
        step("    control.tap (recent list)", lambda: lambda: parts.control.tap(evt.payload.severity, item, (0, 0, 0))),
        step("  thread-local depth +1 / -1", lambda: depth),
        step("  hub.in_hub (current_thread)", lambda: lambda: parts.hub.in_hub),
    ]  # fmt: skip
    emit = [
        step("whole: rt.emit → Process", lambda: lambda: rt.emit(msg)),
        step("clock.now_utc()", lambda: rt.clock.now_utc),
        step("Event(...)", lambda: lambda: Event(msg, now, "runtime")),
        step("encode_envelope (msgspec x2 + size check)", lambda: lambda: p.encode_envelope(msg, ts, "runtime")),
        step("Dispatch.dispatch(evt, item), all of it", lambda: lambda: dispatch.dispatch(evt, item)),
    ]
    return {
        "worker message, parent side (dispatch thread unless marked hub), per message": worker,
        "rt.emit in-process, per message": emit,
    }


def main() -> None:
    count = Count()
    rt = Runtime(name="bench-steps")
    rt.register_process(count)
    rt.boot()
    try:
        for title, steps in parent_steps(rt, count).items():
            print(f"\n{title}  (best of {REPEAT} loops of {K:,} calls, on this thread)")
            width = max(len(s[0]) for s in steps)
            for label, fn, per in steps:
                ns = None if fn is None else per_call(fn) / per
                print(f"  {label.ljust(width)}  {'n/a' if ns is None else f'{ns / 1000:6.2f} µs'}")
    finally:
        rt.shutdown()


if __name__ == "__main__":
    main()

"""Where a dispatched message's time goes, step by step: CPU time per message on one thread.

Each step of worker → Process (in the worker, on the parent's hub and dispatch
threads) and of the in-process ``rt.emit`` → Process is timed alone, in batches
of :data:`BATCH` messages, as thread CPU time (so a loaded machine slows the
figures less than it does wall-clock throughput). The baseline, measured in the
same run, is one whole in-process ``rt.emit`` → Process: each ratio is that
step's share of it. Usage: ``python bench/dispatch_steps.py``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(__file__))

from _common import table
from dispatch import Count, Sample

from bussdcc import Runtime
from bussdcc.kernel import protocol as p
from bussdcc.kernel._event import event_at

BATCH = 300
REPEAT = 200


def per_message(step: Callable[[], object], messages: int = BATCH, repeat: int = REPEAT) -> float:
    """Thread CPU seconds per message of ``step`` (which handles ``messages``), best of five rounds."""
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(repeat):
            step()
        best = min(best, (time.thread_time() - t0) / repeat / messages)
    return best


def main() -> None:
    items = [p.encode_envelope(Sample(i, 21.5, "C"), time.time(), "flood") for i in range(BATCH)]
    frame = p.encode_batch(1, items)
    rt = Runtime(name="bench-steps")
    count = Count(0)
    rt.register_process(count)
    steps: list[tuple[str, float]] = []
    with rt:
        d = rt._dispatch
        control = rt._parts.control if rt._parts is not None else None
        assert control is not None
        raws = p.decode(frame, p.WORKER_FRAMES).items  # type: ignore[union-attr]
        envs = p.decode(frame, p.ITEM_BATCH).items
        body = p.decode_message(Sample.name, envs[0].body)  # type: ignore[union-attr]
        decoder = p.BODY_DECODERS[Sample.name]
        payloads = [decoder.decode(e.body) for e in envs]  # type: ignore[union-attr]
        events = [event_at(m, 1.0, "flood") for m in payloads]

        def emit_in_process() -> None:
            for i in range(BATCH):
                rt.emit(Sample(i=i, value=21.5, unit="C"))

        whole = per_message(emit_in_process, repeat=REPEAT // 4)

        def dispatch_all() -> None:
            for e, i in zip(events, items, strict=True):
                d.dispatch(e, i)

        def dispatch_items() -> None:
            for e, i in zip(envs, items, strict=True):
                d.dispatch_item(e, i, "flood")  # type: ignore[arg-type]

        def tap_all() -> None:
            for i in items:
                control.tap(20, i)

        def handle_all() -> None:
            for e in events:
                count.handle_event(rt.ctx, e)

        steps = [
            ("worker: the message itself, Sample(...)", per_message(lambda: [Sample(1, 21.5, "C") for _ in range(BATCH)])),
            ("worker: encode its envelope (one encoder call)", per_message(lambda: [p.encode_envelope(body, 1.0, "flood") for _ in range(BATCH)])),
            ("worker: join the batch frame", per_message(lambda: p.encode_batch(1, items))),
            ("hub: decode the frame (items as Raw)", per_message(lambda: p.decode(frame, p.WORKER_FRAMES))),
            ("dispatch: decode the batch, typed, one call", per_message(lambda: p.decode(frame, p.ITEM_BATCH))),
            ("dispatch: copy each item for the outbox/tap", per_message(lambda: [bytes(r) for r in raws])),
            ("dispatch: decode each message body", per_message(lambda: [decoder.decode(e.body) for e in envs])),  # type: ignore[union-attr]
            ("dispatch: build each Event", per_message(lambda: [event_at(m, 1.0, "flood") for m in payloads])),
            ("dispatch: dispatch_item (body, Event, dispatch)", per_message(dispatch_items)),
            ("dispatch: dispatch(evt, item) alone", per_message(dispatch_all)),
            ("  of which: the control tap", per_message(tap_all)),
            ("  of which: the Process's handle_event", per_message(handle_all)),
        ]  # fmt: skip
    assert count.n > 0

    def ns(x: float) -> str:
        return f"{x * 1e9:,.0f} ns"

    rows = [(name, ns(cost), "in-process rt.emit -> Process", ns(whole), f"{cost / whole:.2f}") for name, cost in steps]
    table(f"dispatch steps: CPU time per message, batches of {BATCH}", rows)


if __name__ == "__main__":
    main()

"""Review: what the HTTP endpoint serves is JSON a browser can parse, whatever the messages hold."""

from __future__ import annotations

import json
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any

from bussdcc import Context, Message, Service

from ._helpers import MakeRuntime, wait_until
from ._web import base, get


@dataclass(slots=True, frozen=True)
class Odd(Message):
    """A reading a sensor could well produce: not a number, or out of range."""

    name = "test.review.odd"
    value: float


class OddSensor(Service):
    name = "odd-sensor"
    interval = 0.05

    def tick(self, ctx: Context) -> None:
        ctx.emit(Odd(float("nan")))
        ctx.emit(Odd(float("inf")))
        ctx.emit(Odd(float("-inf")))


def _strict(text: str | bytes) -> Any:
    """Parse as JSON.parse does: NaN and Infinity are no JSON."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_events_with_non_finite_floats_are_valid_json(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("review-nan", OddSensor(), http="127.0.0.1:0")
    rec.wait_for("test.review.odd", count=3, timeout=30)

    def some() -> Any:
        status, _, body = get(base(rt) + "/api/events?name=test.review.*&n=10")
        assert status == 200, body
        events = _strict(body)["events"]
        return events if len(events) >= 3 else None

    events = wait_until(some, timeout=30, what="the odd readings in /api/events")
    assert {repr(e["payload"]["value"]) for e in events} <= {"None"}


def test_the_event_stream_with_non_finite_floats_is_valid_json(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("review-nan-sse", OddSensor(), http="127.0.0.1:0")
    data: list[str] = []
    done = threading.Event()

    def read() -> None:
        with urllib.request.urlopen(base(rt) + "/api/stream?name=test.review.*&n=0", timeout=30) as resp:
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: ") and "test.review.odd" in line:
                    data.append(line[len("data: ") :])
                    if len(data) >= 3:
                        done.set()
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert done.wait(30), "three odd readings on the stream"
    reader.join(30)
    for line in data:
        _strict(line)

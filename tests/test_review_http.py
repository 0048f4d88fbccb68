"""Review: what the HTTP endpoint serves is JSON a browser can parse, whatever the messages hold."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

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


@pytest.mark.timeout(150)
def test_connections_that_trickle_their_request_do_not_lock_the_endpoint_out(
    make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bussdcc.supervisor import _http

    # However slowly it arrives, a request must be whole within the deadline; the bounds are small
    # here so that a loaded machine fills every connection slot well within the deadline.
    monkeypatch.setattr(_http, "_REQUEST_DEADLINE", 10.0, raising=False)
    monkeypatch.setattr(_http, "_MAX_CONNECTIONS", 4)
    rt, _ = make_runtime("review-slowloris", http="127.0.0.1:0")
    host, port = rt.http_address or ("", 0)
    held: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(_http._MAX_CONNECTIONS):
            s = socket.create_connection((host, port), timeout=30)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(s)

        def trickle() -> None:  # one more byte of a header every half second: never silent for the socket timeout
            while not stop.wait(0.5):
                for s in held:
                    try:
                        s.sendall(b"a")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        httpd = rt._parts.web._httpd  # type: ignore[union-attr]
        assert httpd is not None
        # Every connection the endpoint serves at once is taken by a trickler.
        wait_until(lambda: httpd._active >= _http._MAX_CONNECTIONS, timeout=30, what="the tricklers served")

        def served() -> bool:
            try:
                return get(base(rt) + "/metrics", timeout=5)[0] == 200
            except OSError:
                return False

        wait_until(served, timeout=60, what="a scrape served while every connection slot trickles")
    finally:
        stop.set()
        for s in held:
            s.close()


def test_head_of_the_event_stream_sends_headers_only_and_holds_no_stream(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("review-head-stream", http="127.0.0.1:0")
    host, port = rt.http_address or ("", 0)
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"HEAD /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):  # the server closes a HEAD answer: no body follows the headers
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    assert body == b"", body[:200]

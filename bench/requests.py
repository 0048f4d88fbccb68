"""Device call benchmark: round trips and calls/s, beside raw pyzmq DEALER/ROUTER + msgspec.

Rows: a call's round trip p50/p99 from the parent's main thread and from a
Service (another worker, routed through the parent), and calls/s with 1 and 8
concurrent callers. The baseline is measured in the same run: a forked child
with a DEALER that decodes a call (method, args, kwargs) with msgspec, runs it
and replies, and a parent ROUTER on one thread (1 request outstanding, or 8
kept in flight for the 8-caller row). Usage: ``python bench/requests.py [TRIPS]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, percentile, short_tmp, table
from dispatch import _connect_when_bound, _fork_and_bind

from bussdcc import Context, Device, Message, Process, Runtime, Service

TRIPS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
WARMUP = 200
CALLS = 4 * TRIPS  # for the calls/s rows
CALLERS = 8


class Motor(Device):
    kind = "motor"

    def move(self, position: float, speed: float = 1.0) -> float:
        return position * speed


@dataclass(slots=True, frozen=True)
class Samples(Message):
    """Round trips measured inside a Service."""

    name = "bench.call_samples"
    seconds: list[float]


class Caller(Service):
    """Calls the motor from its own process, then reports the timings."""

    name = "caller"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        motor = ctx.device(Motor, "axis-1")
        out: list[float] = []
        for n in range(TRIPS + WARMUP):
            t0 = time.perf_counter()
            motor.call(Motor.move, float(n), speed=2.0)
            if n >= WARMUP:
                out.append(time.perf_counter() - t0)
        ctx.emit(Samples(seconds=out))


class Collect(Process):
    name = "collect"

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.done = threading.Event()

    def handle_event(self, ctx: Context, evt: Any) -> None:
        if isinstance(evt.payload, Samples):
            self.samples = evt.payload.seconds
            self.done.set()


# ---- bussdcc ------------------------------------------------------------------------------


def bussdcc_from_parent() -> tuple[list[float], float, float]:
    rt = Runtime(name="bench-calls")
    rt.attach_device(Motor(id="axis-1"))
    with rt:
        motor = rt.device(Motor, "axis-1")
        rtt: list[float] = []
        for n in range(TRIPS + WARMUP):
            t0 = time.perf_counter()
            motor.call(Motor.move, float(n), speed=2.0)
            if n >= WARMUP:
                rtt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for n in range(CALLS):
            motor.call(Motor.move, float(n))
        one = CALLS / (time.perf_counter() - t0)

        def caller() -> None:
            for n in range(CALLS // CALLERS):
                motor.call(Motor.move, float(n))

        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        many = (CALLS // CALLERS * CALLERS) / (time.perf_counter() - t0)
    return rtt, one, many


def bussdcc_from_service() -> list[float]:
    collect = Collect()
    rt = Runtime(name="bench-svc-calls")
    rt.attach_device(Motor(id="axis-1"))
    rt.register_process(collect)
    rt.register_service(Caller())
    with rt:
        assert collect.done.wait(120)
    return collect.samples


# ---- raw pyzmq + msgspec --------------------------------------------------------------------


class RawCall(msgspec.Struct, array_like=True):
    call_id: int
    method: str
    args: list[Any]
    kwargs: dict[str, Any]


class RawReply(msgspec.Struct, array_like=True):
    call_id: int
    result: float


def raw_calls() -> tuple[list[float], float, float]:
    d = short_tmp()
    endpoint = f"ipc://{d}/calls.sock"
    total = TRIPS + WARMUP + CALLS + CALLS

    def child() -> None:
        ctx, s = _connect_when_bound(endpoint)
        dec = msgspec.msgpack.Decoder(RawCall)
        enc = msgspec.msgpack.Encoder()
        motor = Motor(id="raw")
        s.send(b"hello")
        for _ in range(total):
            call = dec.decode(s.recv())
            result = getattr(motor, call.method)(*call.args, **call.kwargs)
            s.send(enc.encode(RawReply(call.call_id, result)))
        s.close(linger=-1)
        ctx.term()

    pid, ctx, r = _fork_and_bind(child, endpoint)
    ident, _ = r.recv_multipart()
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(RawReply)
    rtt: list[float] = []
    for n in range(TRIPS + WARMUP):
        t0 = time.perf_counter()
        r.send_multipart([ident, enc.encode(RawCall(n, "move", [float(n)], {"speed": 2.0}))])
        _, data = r.recv_multipart()
        dec.decode(data)
        if n >= WARMUP:
            rtt.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for n in range(CALLS):
        r.send_multipart([ident, enc.encode(RawCall(n, "move", [float(n)], {}))])
        dec.decode(r.recv_multipart()[1])
    one = CALLS / (time.perf_counter() - t0)
    # Eight requests in flight at all times: the raw form of eight concurrent callers.
    t0 = time.perf_counter()
    sent = 0
    for _ in range(CALLERS):
        r.send_multipart([ident, enc.encode(RawCall(sent, "move", [1.0], {}))])
        sent += 1
    for _ in range(CALLS):
        dec.decode(r.recv_multipart()[1])
        if sent < CALLS:
            r.send_multipart([ident, enc.encode(RawCall(sent, "move", [1.0], {}))])
            sent += 1
    many = CALLS / (time.perf_counter() - t0)
    os.waitpid(pid, 0)
    r.close(0)
    ctx.term()
    shutil.rmtree(d)
    return rtt, one, many


def main() -> None:
    started = time.monotonic()
    # The raw baseline forks before this process has any ZeroMQ context or thread.
    raw_rtt, raw_one, raw_many = raw_calls()
    rtt, one, many = bussdcc_from_parent()
    svc = bussdcc_from_service()

    def us(x: float) -> str:
        return f"{x * 1e6:,.0f} µs"

    def rate(x: float) -> str:
        return f"{x:,.0f} calls/s"

    r50, r99 = median(raw_rtt), percentile(raw_rtt, 99)
    p50, p99 = median(rtt), percentile(rtt, 99)
    s50, s99 = median(svc), percentile(svc, 99)
    base = "raw DEALER/ROUTER + msgspec"
    rows = [
        ("round trip p50, parent → device", us(p50), base, us(r50), f"{p50 / r50:.2f}"),
        ("round trip p99, parent → device", us(p99), base, us(r99), f"{p99 / r99:.2f}"),
        ("round trip p50, Service → device", us(s50), base, us(r50), f"{s50 / r50:.2f}"),
        ("round trip p99, Service → device", us(s99), base, us(r99), f"{s99 / r99:.2f}"),
        ("calls/s, 1 caller", rate(one), base + ", 1 in flight", rate(raw_one), f"{one / raw_one:.2f}"),
        (f"calls/s, {CALLERS} caller threads", rate(many), base + f", {CALLERS} in flight", rate(raw_many), f"{many / raw_many:.2f}"),
    ]  # fmt: skip
    table(f"device calls: {TRIPS:,} round trips, {CALLS:,} calls per rate row", rows)
    verdict = "met" if p50 <= 2 * r50 else "NOT met"
    print(f"\ntarget: parent → device p50 within 2x of raw -> {p50 / r50:.2f}x ({verdict})")
    print(f"took {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()

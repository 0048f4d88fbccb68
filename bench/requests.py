"""Device call benchmark: round trips and calls/s, beside raw pyzmq DEALER/ROUTER + msgspec.

Rows: a call's round trip p50/p99 from the parent's main thread and from a
Service (another worker: its first call is routed by the parent, the next go
straight to the device), and calls/s with 1 and 8 concurrent callers. The baseline is measured in the same run, in rounds that
alternate with bussdcc's: a forked child with a DEALER that decodes a call
(method, args, kwargs) with msgspec, runs it and replies, and a parent ROUTER
on one thread (1 request in flight, or 8 kept in flight for the 8-caller row).
Usage: ``python bench/requests.py [TRIPS]``.
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

from _common import median, percentile, report, short_tmp, table
from dispatch import _connect_when_bound, _fork_and_bind

from bussdcc import Context, Device, DeviceHandle, Event, Message, Process, Runtime, Service

TRIPS = int(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else 2000
WARMUP = 200
CALLS = 4 * TRIPS  # for the calls/s rows
CALLERS = 8
# Both sides are measured in alternating rounds, so that they share the machine's load.
ROUNDS = 10


class Motor(Device):
    kind = "motor"

    def move(self, position: float, speed: float = 1.0) -> float:
        return position * speed


@dataclass(slots=True, frozen=True)
class Go(Message):
    """Make this many calls from the Service."""

    name = "bench.go"
    n: int


@dataclass(slots=True, frozen=True)
class Samples(Message):
    """Round trips measured inside a Service."""

    name = "bench.call_samples"
    seconds: list[float]


class Caller(Service):
    """Calls the motor from its own process when told to, then reports the timings."""

    name = "caller"
    interval = 3600

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if not isinstance(evt.payload, Go):
            return
        motor = ctx.device(Motor, "axis-1")
        out: list[float] = []
        for n in range(evt.payload.n):
            t0 = time.perf_counter()
            motor.call(Motor.move, float(n), speed=2.0)
            out.append(time.perf_counter() - t0)
        ctx.emit(Samples(seconds=out))


class Collect(Process):
    name = "collect"

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.done = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Samples):
            self.samples = evt.payload.seconds
            self.done.set()


# ---- raw pyzmq + msgspec --------------------------------------------------------------------


class RawCall(msgspec.Struct, array_like=True):
    call_id: int
    method: str
    args: list[Any]
    kwargs: dict[str, Any]


class RawReply(msgspec.Struct, array_like=True):
    call_id: int
    result: float


class Raw:
    """A forked child that serves calls on a DEALER; the parent's ROUTER on one thread."""

    def __init__(self) -> None:
        self.dir = short_tmp()
        endpoint = f"ipc://{self.dir}/calls.sock"

        def child() -> None:
            ctx, s = _connect_when_bound(endpoint)
            dec = msgspec.msgpack.Decoder(RawCall)
            enc = msgspec.msgpack.Encoder()
            motor = Motor(id="raw")
            s.send(b"hello")
            while (data := s.recv()) != b"quit":
                call = dec.decode(data)
                result = getattr(motor, call.method)(*call.args, **call.kwargs)
                s.send(enc.encode(RawReply(call.call_id, result)))
            s.close(linger=-1)
            ctx.term()

        self.pid, self.ctx, self.sock = _fork_and_bind(child, endpoint)
        self.ident, _ = self.sock.recv_multipart()
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(RawReply)

    def round_trips(self, n: int) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            self.sock.send_multipart([self.ident, self.enc.encode(RawCall(i, "move", [float(i)], {"speed": 2.0}))])
            self.dec.decode(self.sock.recv_multipart()[1])
            out.append(time.perf_counter() - t0)
        return out

    def seconds_for(self, n: int, in_flight: int) -> float:
        t0 = time.perf_counter()
        sent = 0
        for _ in range(min(in_flight, n)):
            self.sock.send_multipart([self.ident, self.enc.encode(RawCall(sent, "move", [1.0], {}))])
            sent += 1
        for _ in range(n):
            self.dec.decode(self.sock.recv_multipart()[1])
            if sent < n:
                self.sock.send_multipart([self.ident, self.enc.encode(RawCall(sent, "move", [1.0], {}))])
                sent += 1
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.send_multipart([self.ident, b"quit"])
        os.waitpid(self.pid, 0)
        self.sock.close(0)
        self.ctx.term()
        shutil.rmtree(self.dir)


# ---- bussdcc ------------------------------------------------------------------------------


def round_trips(motor: DeviceHandle[Motor], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        motor.call(Motor.move, float(i), speed=2.0)
        out.append(time.perf_counter() - t0)
    return out


class Callers:
    """Eight threads that make calls together, one round at a time."""

    def __init__(self, motor: DeviceHandle[Motor]) -> None:
        self.motor = motor
        self.per_thread = 0
        self.start = threading.Barrier(CALLERS + 1)
        self.end = threading.Barrier(CALLERS + 1)
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CALLERS)]
        for t in self.threads:
            t.start()

    def run(self) -> None:
        while True:
            self.start.wait()
            if self.per_thread < 0:
                return
            for i in range(self.per_thread):
                self.motor.call(Motor.move, float(i))
            self.end.wait()

    def seconds_for(self, n: int) -> float:
        self.per_thread = n // CALLERS
        t0 = time.perf_counter()
        self.start.wait()
        self.end.wait()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.per_thread = -1
        self.start.wait()
        for t in self.threads:
            t.join()


def main() -> None:
    started = time.monotonic()
    # The raw baseline forks before this process has any ZeroMQ context or thread.
    raw = Raw()
    collect = Collect()
    rt = Runtime(name="bench-calls")
    rt.attach_device(Motor(id="axis-1"))
    rt.register_process(collect)
    rt.register_service(Caller())
    raw_rtt: list[float] = []
    rtt: list[float] = []
    svc: list[float] = []
    raw_one = raw_many = one = many = 0.0
    with rt:
        motor = rt.device(Motor, "axis-1")
        callers = Callers(motor)
        raw.round_trips(WARMUP)
        round_trips(motor, WARMUP)
        per_round, calls_per_round = TRIPS // ROUNDS, CALLS // ROUNDS
        for _ in range(ROUNDS):
            raw_rtt += raw.round_trips(per_round)
            rtt += round_trips(motor, per_round)
            collect.done.clear()
            rt.emit(Go(n=per_round))
            assert collect.done.wait(60)
            svc += collect.samples
            raw_one += raw.seconds_for(calls_per_round, 1)
            t0 = time.perf_counter()
            for i in range(calls_per_round):
                motor.call(Motor.move, float(i))
            one += time.perf_counter() - t0
            raw_many += raw.seconds_for(calls_per_round, CALLERS)
            many += callers.seconds_for(calls_per_round)
        callers.close()
    raw.close()
    total = calls_per_round * ROUNDS
    rate_raw_one, rate_raw_many = total / raw_one, total / raw_many
    rate_one, rate_many = total / one, (calls_per_round // CALLERS * CALLERS * ROUNDS) / many

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
        ("calls/s, 1 caller", rate(rate_one), base + ", 1 in flight", rate(rate_raw_one), f"{rate_one / rate_raw_one:.2f}"),
        (f"calls/s, {CALLERS} caller threads", rate(rate_many), base + f", {CALLERS} in flight", rate(rate_raw_many), f"{rate_many / rate_raw_many:.2f}"),
    ]  # fmt: skip
    table(f"device calls: {TRIPS:,} round trips, {total:,} calls per rate row, {ROUNDS} alternating rounds", rows)
    print()
    targets = [
        ("parent → device p50 ≤ 1.5x raw", p50 / r50, p50 <= 1.5 * r50),
        ("Service → device p50 ≤ 2x raw", s50 / r50, s50 <= 2 * r50),
        ("calls/s, 1 caller ≥ 0.7x raw", rate_one / rate_raw_one, rate_one >= 0.7 * rate_raw_one),
        (f"calls/s, {CALLERS} callers ≥ 0.5x raw", rate_many / rate_raw_many, rate_many >= 0.5 * rate_raw_many),
    ]
    for what, ratio, met in targets:
        print(f"target: {what} -> {ratio:.2f}x ({'met' if met else 'NOT met'})")
    print(f"took {time.monotonic() - started:.1f} s")
    report("call_parent", p50, r50, "s", base)
    report("call_service", s50, r50, "s", base)
    report("calls_1", rate_one, rate_raw_one, "calls/s", base + ", 1 in flight")
    report(f"calls_{CALLERS}", rate_many, rate_raw_many, "calls/s", base + f", {CALLERS} in flight")


if __name__ == "__main__":
    main()

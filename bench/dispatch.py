"""Dispatch benchmark: worker → parent Process throughput, and parent → worker → parent round trip.

Each bussdcc figure is printed beside baselines measured in the same run:
raw pyzmq (a forked child and a ROUTER parent, msgspec on both ends) and the
same load on an in-process EventBus. Usage: ``python bench/dispatch.py [N]``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, percentile, short_tmp, table

from bussdcc import Context, Event, EventBus, Message, Process, Runtime, Service


@dataclass(slots=True, frozen=True)
class Sample(Message):
    """A typical small telemetry message."""

    name = "bench.sample"
    i: int
    value: float
    unit: str


@dataclass(slots=True, frozen=True)
class Ping(Message):
    """Round-trip request."""

    name = "bench.ping"
    n: int


@dataclass(slots=True, frozen=True)
class Pong(Message):
    """Round-trip answer."""

    name = "bench.pong"
    n: int


# Read only when run as a script: other benchmarks import the functions below.
N = int(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else 200_000
TRIPS = 2000
WARMUP = 200


# ---- bussdcc ------------------------------------------------------------------------


class Flood(Service):
    name = "flood"
    interval = 3600

    def __init__(self, total: int = N) -> None:
        self.total = total

    def tick(self, ctx: Context) -> None:
        for i in range(self.total):
            ctx.emit(Sample(i=i, value=21.5, unit="C"))


class Count(Process):
    name = "count"

    def __init__(self, total: int = N) -> None:
        self.total = total
        self.n = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Sample):
            if self.n == 0:
                self.first = time.perf_counter()
            self.n += 1
            if self.n == self.total:
                self.last = time.perf_counter()
                self.done.set()


def bussdcc_throughput(n: int = N) -> float:
    """Messages per second from one Service's ``ctx.emit`` to a Process, first to last received."""
    count = Count(n)
    rt = Runtime(name="bench-tp")
    rt.register_process(count)
    rt.register_service(Flood(n))
    with rt:
        assert count.done.wait(300)
    return (n - 1) / (count.last - count.first)


class Echo(Service):
    name = "echo"
    interval = 3600

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            ctx.emit(Pong(n=evt.payload.n))


class Waiter(Process):
    name = "waiter"

    def __init__(self) -> None:
        self.got = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Pong):
            self.got.set()


class Driver(Process):
    """Drives the round trips from the hub thread, as a control-loop Process does."""

    name = "driver"

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.t0 = 0.0
        self.n = 0
        self.done = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Pong):
            self.samples.append(time.perf_counter() - self.t0)
            self.n += 1
            if self.n >= TRIPS + WARMUP:
                self.done.set()
                return
            self.t0 = time.perf_counter()
            ctx.emit(Ping(n=self.n))


def bussdcc_round_trip_from_process() -> list[float]:
    driver = Driver()
    rt = Runtime(name="bench-rtt-proc")
    rt.register_process(driver)
    rt.register_service(Echo())
    with rt:
        driver.t0 = time.perf_counter()
        rt.emit(Ping(n=0))
        assert driver.done.wait(60)
    return driver.samples[WARMUP:]


def bussdcc_round_trip() -> list[float]:
    waiter = Waiter()
    rt = Runtime(name="bench-rtt")
    rt.register_process(waiter)
    rt.register_service(Echo())
    out = []
    with rt:
        for n in range(TRIPS + WARMUP):
            waiter.got.clear()
            t0 = time.perf_counter()
            rt.emit(Ping(n=n))
            assert waiter.got.wait(10)
            if n >= WARMUP:
                out.append(time.perf_counter() - t0)
    return out


# ---- raw pyzmq + msgspec --------------------------------------------------------------


def _connect_when_bound(endpoint: str) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    # Connecting before the parent has bound the ipc path can stall the first
    # messages; wait for the path to exist (a bounded wait).
    path = endpoint.removeprefix("ipc://")
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.001)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(endpoint)
    return ctx, s


def _fork_and_bind(child: Any, endpoint: str) -> tuple[int, zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    """Fork ``child``, then (in the parent only) bind a ROUTER on ``endpoint``."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.bind(endpoint)
    return pid, ctx, r


def raw_throughput(batch: int) -> float:
    d = short_tmp()
    endpoint = f"ipc://{d}/raw.sock"
    enc = msgspec.msgpack.Encoder()

    def child() -> None:
        ctx, s = _connect_when_bound(endpoint)
        if batch == 1:
            for i in range(N):
                s.send(enc.encode(Sample(i=i, value=21.5, unit="C")))
        else:
            buf: list[Sample] = []
            for i in range(N):
                buf.append(Sample(i=i, value=21.5, unit="C"))
                if len(buf) == batch:
                    s.send(enc.encode(buf))
                    buf = []
            if buf:
                s.send(enc.encode(buf))
        # Without this ack, libzmq drops what is still queued in the parent's
        # full inbound pipe when this process exits (linger does not help).
        s.recv()
        s.close(linger=-1)
        ctx.term()

    pid, ctx, r = _fork_and_bind(child, endpoint)
    one = msgspec.msgpack.Decoder(Sample)
    many = msgspec.msgpack.Decoder(list[Sample])
    got = 0
    sink: list[Sample] = []
    handler = sink.append
    first = 0.0
    ident = b""
    while got < N:
        ident, data = r.recv_multipart()
        if got == 0:
            first = time.perf_counter()
        if batch == 1:
            handler(one.decode(data))
            got += 1
        else:
            items = many.decode(data)
            for s in items:
                handler(s)
            got += len(items)
        if len(sink) > 10000:
            sink.clear()
    last = time.perf_counter()
    r.send_multipart([ident, b"ack"])
    os.waitpid(pid, 0)
    r.close(0)
    ctx.term()
    shutil.rmtree(d)
    return (N - 1) / (last - first)


def raw_round_trip() -> list[float]:
    d = short_tmp()
    endpoint = f"ipc://{d}/rtt.sock"

    def child() -> None:
        ctx, s = _connect_when_bound(endpoint)
        dec = msgspec.msgpack.Decoder(Ping)
        enc = msgspec.msgpack.Encoder()
        s.send(b"hello")
        for _ in range(TRIPS + WARMUP):
            ping = dec.decode(s.recv())
            s.send(enc.encode(Pong(n=ping.n)))
        s.close(linger=-1)
        ctx.term()

    pid, ctx, r = _fork_and_bind(child, endpoint)
    ident, _ = r.recv_multipart()
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(Pong)
    out = []
    for n in range(TRIPS + WARMUP):
        t0 = time.perf_counter()
        r.send_multipart([ident, enc.encode(Ping(n=n))])
        _, data = r.recv_multipart()
        dec.decode(data)
        if n >= WARMUP:
            out.append(time.perf_counter() - t0)
    os.waitpid(pid, 0)
    r.close(0)
    ctx.term()
    shutil.rmtree(d)
    return out


# ---- in-process EventBus -------------------------------------------------------------


def bus_throughput() -> float:
    bus = EventBus()
    seen = [0]

    def handler(evt: Event[Sample]) -> None:
        seen[0] += 1

    bus.subscribe(Sample, handler)
    now = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    for i in range(N):
        bus.publish(Event(Sample(i=i, value=21.5, unit="C"), now, "bench"))
    assert seen[0] == N
    return N / (time.perf_counter() - t0)


def bus_round_trip() -> list[float]:
    bus = EventBus()
    now = dt.datetime.now(dt.UTC)
    got = threading.Event()
    bus.subscribe(Ping, lambda e: bus.publish(Event(Pong(n=e.payload.n), now, "echo")))
    bus.subscribe(Pong, lambda e: got.set())
    out = []
    for n in range(TRIPS + WARMUP):
        got.clear()
        t0 = time.perf_counter()
        bus.publish(Event(Ping(n=n), now, "bench"))
        assert got.is_set()
        if n >= WARMUP:
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    # Raw baselines fork before this process has any ZeroMQ context or thread.
    raw_tp = raw_throughput(1)
    raw_tp_batched = raw_throughput(256)
    raw_rtt = raw_round_trip()
    bus_tp = bus_throughput()
    bus_rtt = bus_round_trip()
    ours_tp = bussdcc_throughput()
    ours_rtt = bussdcc_round_trip_from_process()
    main_rtt = bussdcc_round_trip()

    def rate(x: float) -> str:
        return f"{x:,.0f} msg/s"

    def us(x: float) -> str:
        return f"{x * 1e6:,.0f} µs"

    p50, p99 = median(ours_rtt), percentile(ours_rtt, 99)
    m50, m99 = median(main_rtt), percentile(main_rtt, 99)
    raw50, raw99 = median(raw_rtt), percentile(raw_rtt, 99)
    rows = [
        ("worker→Process throughput", rate(ours_tp), "raw pyzmq+msgspec, 1 msg/frame", rate(raw_tp), f"{ours_tp / raw_tp:.2f}"),
        ("", "", "raw pyzmq+msgspec, 256 msg/frame", rate(raw_tp_batched), f"{ours_tp / raw_tp_batched:.2f}"),
        ("", "", "in-process EventBus", rate(bus_tp), f"{ours_tp / bus_tp:.2f}"),
        ("round trip p50, from a Process", us(p50), "raw pyzmq+msgspec", us(raw50), f"{p50 / raw50:.2f}"),
        ("", "", "in-process EventBus", us(median(bus_rtt)), f"{p50 / median(bus_rtt):.0f}"),
        ("round trip p99, from a Process", us(p99), "raw pyzmq+msgspec", us(raw99), f"{p99 / raw99:.2f}"),
        ("round trip p50, from main thread", us(m50), "raw pyzmq+msgspec", us(raw50), f"{m50 / raw50:.2f}"),
        ("round trip p99, from main thread", us(m99), "raw pyzmq+msgspec", us(raw99), f"{m99 / raw99:.2f}"),
    ]  # fmt: skip
    table(f"dispatch: {N:,} messages, {TRIPS:,} round trips", rows)
    print(
        "\ntargets: throughput >= 60% of raw 1 msg/frame -> "
        f"{ours_tp / raw_tp:.0%}"
        f" ({'met' if ours_tp >= 0.6 * raw_tp else 'NOT met'}); "
        f"round trip p50 < 200 µs -> {p50 * 1e6:.0f} µs from a Process, {m50 * 1e6:.0f} µs from the main thread"
        f" ({'met' if p50 < 200e-6 else 'NOT met'}; the raw baseline alone takes {raw50 * 1e6:.0f} µs here)"
    )


if __name__ == "__main__":
    main()

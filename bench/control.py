"""Control plane benchmark: a status request, the event stream, and what a subscriber costs dispatch.

Each figure is printed beside a baseline measured in the same run: a raw
pyzmq DEALER/ROUTER round trip with msgspec, dispatch with nobody
subscribed, and a bare interpreter start. Usage: ``python bench/control.py [N]``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import msgspec
import zmq

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, percentile, short_tmp, table

from bussdcc import Context, Event, Message, Process, Runtime
from bussdcc.cli._client import Client
from bussdcc.kernel import protocol as p

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
ROUNDS = 300


@dataclass(slots=True, frozen=True)
class Tick(Message):
    """A small message."""

    name = "bench.tick"
    i: int


class Count(Process):
    """Counts what it is handed."""

    name = "count"

    def __init__(self) -> None:
        self.n = 0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        self.n += 1


def raw_round_trip() -> list[float]:
    """DEALER → ROUTER (a thread) → DEALER with a msgspec-encoded struct each way."""
    path = short_tmp()
    endpoint = f"ipc://{path}/raw.sock"
    zctx = zmq.Context()
    router = zctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(p.ControlRequest)

    def serve() -> None:
        for _ in range(ROUNDS):
            ident, data = router.recv_multipart()
            dec.decode(data)
            router.send_multipart([ident, enc.encode(p.Done("ok"))])

    server = threading.Thread(target=serve)
    server.start()
    dealer = zctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        dealer.send(enc.encode(p.StatusRequest(b"x" * 32)))
        dealer.recv()
        times.append(time.perf_counter() - t0)
    server.join()
    dealer.close(0)
    router.close(0)
    zctx.term()
    shutil.rmtree(path, ignore_errors=True)
    return times


def status_round_trip(rt: Runtime) -> list[float]:
    assert rt.run_dir is not None
    times = []
    with Client(rt.run_dir) as client:
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            client.call(p.StatusRequest(client.secret))
            times.append(time.perf_counter() - t0)
    return times


def emit_rate(rt: Runtime, count: Count) -> float:
    start = count.n
    t0 = time.perf_counter()
    for i in range(N):
        rt.emit(Tick(i=i))
    elapsed = time.perf_counter() - t0
    assert count.n - start >= N
    return N / elapsed


def emit_rate_followed(rt: Runtime, count: Count) -> tuple[float, float]:
    """Dispatch rate while ``bussdcc events -f`` (another process) follows; the share it accounted for."""
    assert rt.run_dir is not None
    path = short_tmp()
    out_path = os.path.join(path, "events.out")
    with open(out_path, "w") as out, open(os.path.join(path, "events.err"), "w") as err:
        follower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bussdcc",
                "events",
                "-f",
                "-n",
                "0",
                "--name",
                "bench.tick",
                "--run-dir",
                str(rt.run_dir),
            ],
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 20
        while os.path.getsize(out_path) == 0 and time.monotonic() < deadline:
            rt.emit(Tick(i=-1))  # until the follower shows one: it is subscribed
            time.sleep(0.05)
        start = _lines(out_path)
        rate = emit_rate(rt, count)
        deadline = time.monotonic() + 30
        while _accounted(path) - start < N and time.monotonic() < deadline:
            rt.emit(Tick(i=-2))  # what was missed is told with the next message
            time.sleep(0.2)
        share = (_accounted(path) - start) / N
    finally:
        follower.terminate()
        follower.wait()
        shutil.rmtree(path, ignore_errors=True)
    return rate, share


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _accounted(folder: str) -> int:
    """Lines the follower printed, plus the messages it was told it missed."""
    missed = 0
    with open(os.path.join(folder, "events.err")) as f:
        for line in f:
            if line.startswith("-- "):
                missed += int(line.split()[1])
    return _lines(os.path.join(folder, "events.out")) + missed


def cli_time(args: list[str], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(args, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return median(times)


def main() -> None:
    base = short_tmp()
    os.environ["BUSSDCC_RUN_BASE"] = base
    count = Count()
    rt = Runtime(name="bench")
    rt.register_process(count)
    rt.boot()
    try:
        raw = raw_round_trip()
        ours = status_round_trip(rt)
        quiet = emit_rate(rt, count)
        followed, share = emit_rate_followed(rt, count)
        quiet2 = emit_rate(rt, count)
        cli = cli_time([sys.executable, "-m", "bussdcc", "status", "--json"])
        bare = cli_time([sys.executable, "-c", "import bussdcc"])
    finally:
        rt.shutdown()
        shutil.rmtree(base, ignore_errors=True)
    us = 1e6
    quiet_best = max(quiet, quiet2)
    rows = [
        (
            "status round trip p50",
            f"{median(ours) * us:.0f} µs",
            "raw DEALER/ROUTER + msgspec",
            f"{median(raw) * us:.0f} µs",
            f"{median(ours) / median(raw):.2f}",
        ),
        (
            "status round trip p99",
            f"{percentile(ours, 99) * us:.0f} µs",
            "raw DEALER/ROUTER + msgspec",
            f"{percentile(raw, 99) * us:.0f} µs",
            f"{percentile(ours, 99) / percentile(raw, 99):.2f}",
        ),
        (
            "emit rate, `events -f` following",
            f"{followed:,.0f} msg/s",
            "emit rate, nobody subscribed",
            f"{quiet_best:,.0f} msg/s",
            f"{followed / quiet_best:.2f}",
        ),
        ("share it printed or was told it missed", f"{share:.0%}", "", "", ""),
        (
            "`bussdcc status --json`, wall p50",
            f"{cli * 1000:.0f} ms",
            "`python -c 'import bussdcc'`",
            f"{bare * 1000:.0f} ms",
            f"{cli / bare:.2f}",
        ),
    ]
    table(f"control plane, {N:,} messages", rows)


if __name__ == "__main__":
    main()

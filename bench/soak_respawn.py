"""Respawn soak: a worker that dies at once, respawned N times, while the rest keeps working.

A Service exits as soon as it ticks (exit code 3) and is respawned without
backoff, over and over; meanwhile a healthy Service ticks and a parent thread
calls a Device. The parent's resident memory, open file descriptors and
threads are sampled at 0%, 10%, 50% and 100% of the respawns; growth from the
10% sample (after warm-up) to the end above the thresholds is a leak, and the
script exits 1.
Usage: ``python bench/soak_respawn.py [--respawns N]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

sys.path.insert(0, os.path.dirname(__file__))

from bussdcc import Context, Device, Event, Message, Process, Runtime, Service, message

MAX_RSS_GROWTH = 20 * 1024 * 1024
MAX_FD_GROWTH = 10
MAX_THREAD_GROWTH = 2
MARKS = (0, 10, 50, 100)


class Dies(Service):
    """Ends with exit code 3 on its first tick, in every incarnation (its last frames sent first)."""

    name = "dies"
    interval = 0.001
    max_restarts = 1_000_000_000
    restart_window = 1.0  # keeps the intensity bookkeeping to the last second's respawns
    backoff_initial = 0.001
    backoff_max = 0.001
    # Never healthy for long enough: the failure streak grows to N, far past where `2.0 ** streak`
    # would overflow, so the soak also shows that supervision goes on after any number of failures.
    backoff_reset = 3600.0

    def tick(self, ctx: Context) -> None:
        sys.exit(3)


@dataclass(slots=True, frozen=True)
class Beat(Message):
    """The healthy service's sign of life."""

    name = "soak.beat"
    i: int


class Healthy(Service):
    """Ticks all along, to show the rest of the runtime keeps working."""

    name = "healthy"
    interval = 0.01

    def start(self, ctx: Context) -> None:
        self.i = 0

    def tick(self, ctx: Context) -> None:
        self.i += 1
        ctx.emit(Beat(i=self.i))


class Gauge(Device):
    """A device the parent calls in a loop."""

    kind = "gauge"

    def read(self, n: int) -> int:
        return n + 1


class Count(Process):
    """Counts the dying worker's exits and the healthy one's beats, keeping nothing else."""

    name = "count"

    def __init__(self) -> None:
        self.exits = 0
        self.beats = 0
        self.cond = threading.Condition()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        msg = evt.payload
        if isinstance(msg, message.WorkerExited) and msg.worker == Dies.name:
            with self.cond:
                self.exits += 1
                self.cond.notify_all()
        elif isinstance(msg, Beat):
            self.beats += 1

    def wait_exits(self, n: int, stall: float = 60.0) -> None:
        """Block until ``n`` exits were counted; fail if none comes for ``stall`` seconds."""
        with self.cond:
            while self.exits < n:
                seen = self.exits
                if not self.cond.wait(stall) and self.exits == seen:
                    raise SystemExit(f"no respawn for {stall:g}s after {seen} (wanted {n})")


@dataclass(slots=True, frozen=True)
class Sample:
    """The parent's resources at one point of the run."""

    mark: int
    exits: int
    at: float
    rss: int
    fds: int
    threads: int


def sample(mark: int, exits: int, me: psutil.Process) -> Sample:
    return Sample(
        mark=mark,
        exits=exits,
        at=time.monotonic(),
        rss=me.memory_info().rss,
        fds=len(os.listdir("/proc/self/fd")),
        threads=threading.active_count(),
    )


def show(title: str, head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Print ``rows`` under ``head`` as an aligned table."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}  (pid {os.getpid()}, {os.cpu_count()} cores)")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--respawns", type=int, default=10_000, help="worker exits to wait for (default 10000)")
    args = parser.parse_args()
    respawns: int = args.respawns
    if respawns < 10:
        parser.error("--respawns must be at least 10")

    count = Count()
    rt = Runtime(name="soak-respawn")
    rt.register_process(count)
    rt.attach_device(Gauge(id="gauge"))
    rt.register_service(Healthy())
    rt.register_service(Dies())
    me = psutil.Process()
    calls = 0
    call_errors: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        nonlocal calls
        gauge = rt.device(Gauge, "gauge")
        while not stop.is_set():
            try:
                if gauge.call(Gauge.read, calls) != calls + 1:
                    call_errors.append(f"wrong answer to call {calls}")
            except Exception as exc:  # a soak reports what went wrong instead of stopping
                call_errors.append(repr(exc))
            calls += 1
            stop.wait(0.001)  # a steady load of calls, not a busy loop that starves the supervisor

    samples: list[Sample] = []
    t0 = time.monotonic()
    with rt:
        thread = threading.Thread(target=caller, name="soak-caller")
        thread.start()
        try:
            for mark in MARKS:
                count.wait_exits(respawns * mark // 100)
                samples.append(sample(mark, count.exits, me))
        finally:
            stop.set()
            thread.join()
        restarts = rt.stats().restarts
    elapsed = time.monotonic() - t0

    first, warm, last = samples[0], samples[1], samples[-1]
    rate = (last.exits - first.exits) / (last.at - first.at)
    rows = [
        (f"{s.mark}% ({s.exits} exits)", f"{s.rss / 2**20:.1f} MiB", f"{s.fds} fds", f"{s.threads} threads", "")
        for s in samples
    ]
    growth = (last.rss - warm.rss, last.fds - warm.fds, last.threads - warm.threads)
    rows.append(
        (
            "growth 10% -> 100%",
            f"{growth[0] / 2**20:+.1f} MiB",
            f"{growth[1]:+d} fds",
            f"{growth[2]:+d} threads",
            f"limits {MAX_RSS_GROWTH >> 20} MiB / {MAX_FD_GROWTH} / {MAX_THREAD_GROWTH}",
        )
    )
    rows.append(
        ("respawns/s", f"{rate:.0f}", f"{elapsed:.0f} s in all", f"{calls} device calls", f"{count.beats} beats")
    )
    head = ("sample", "parent RSS", "open fds", "threads", "")
    show(f"respawn soak: {respawns} respawns of a worker that exits at once", head, rows)

    failures = []
    if growth[0] > MAX_RSS_GROWTH:
        failures.append(f"parent RSS grew {growth[0] / 2**20:.1f} MiB")
    if growth[1] > MAX_FD_GROWTH:
        failures.append(f"parent fds grew by {growth[1]}")
    if growth[2] > MAX_THREAD_GROWTH:
        failures.append(f"parent threads grew by {growth[2]}")
    if call_errors:
        failures.append(f"{len(call_errors)} device calls failed, first: {call_errors[0]}")
    if restarts.get("healthy") or restarts.get("gauge"):
        failures.append(f"healthy workers were restarted: {restarts}")
    if not count.beats:
        failures.append("the healthy service never ticked")
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print("\nflat: no leak above the limits")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Recording benchmark: worker → parent dispatch throughput with recording on, against off, in the same run.

Each round runs the same flood (one Service emitting N small messages to a
counting Process) twice: without a recording (the baseline) and with
``Runtime(record=...)``; the table shows the best of each and their ratio, the
size of the recording per million messages, and where the CPU goes: the
parent's and the flooding worker's CPU time per message in each mode, and how
many of the machine's cores the two keep busy while the flood lasts (with
recording off on a 2-core machine they already use nearly both, so whatever
recording costs, in any thread or process, comes out of the throughput).
Usage: ``python bench/record.py [N] [ROUNDS]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import psutil

sys.path.insert(0, os.path.dirname(__file__))

from _common import report, table
from dispatch import Count, Flood

from bussdcc import Runtime

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3


@dataclass
class Run:
    """One flood: its throughput, and the CPU the parent and the flooding worker spent per message."""

    rate: float
    parent_us: float
    worker_us: float
    cores: float


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def flood(record: str | None) -> Run:
    """Messages per second from the worker through the parent's dispatch, and the CPU it took."""
    count = Count(N)
    rt = Runtime(name="bench-rec", record=record)
    rt.register_process(count)
    rt.register_service(Flood(N))
    me = psutil.Process()
    with rt:
        pid = next(w.pid for w in rt.workers() if w.name == "flood" and w.pid is not None)
        worker = psutil.Process(pid)
        p0, w0, t0 = _cpu(me), _cpu(worker), time.perf_counter()
        assert count.done.wait(600)
        p1, w1, t1 = _cpu(me), _cpu(worker), time.perf_counter()
    parent, work = (p1 - p0) / N * 1e6, (w1 - w0) / N * 1e6
    return Run((N - 1) / (count.last - count.first), parent, work, ((p1 - p0) + (w1 - w0)) / (t1 - t0))


def main() -> None:
    folder = tempfile.mkdtemp(prefix="bench-rec-")
    path = os.path.join(folder, "run.mcap")
    off: list[Run] = []
    on: list[Run] = []
    size = 0
    try:
        for _ in range(ROUNDS):
            off.append(flood(None))
            on.append(flood(path))
            size = os.path.getsize(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    best_off = max(off, key=lambda r: r.rate)
    best_on = max(on, key=lambda r: r.rate)
    table(
        f"Recording: {N} messages worker → parent, best of {ROUNDS}",
        [
            (
                "dispatch msg/s, recording",
                f"{best_on.rate:,.0f}",
                "recording off",
                f"{best_off.rate:,.0f}",
                f"{best_on.rate / best_off.rate:.2f}",
            ),
            ("file MB per million messages", f"{size / N:.1f}", "", "", ""),
            (
                "parent CPU µs per message",
                f"{best_on.parent_us:.2f}",
                "recording off",
                f"{best_off.parent_us:.2f}",
                f"{best_on.parent_us / best_off.parent_us:.2f}",
            ),
            (
                "flooding worker CPU µs per message",
                f"{best_on.worker_us:.2f}",
                "recording off",
                f"{best_off.worker_us:.2f}",
                f"{best_on.worker_us / best_off.worker_us:.2f}",
            ),
            (
                "cores busy (parent + worker)",
                f"{best_on.cores:.2f}",
                "recording off",
                f"{best_off.cores:.2f}",
                f"of {os.cpu_count()}",
            ),
        ],
    )
    report("record_ratio", best_on.rate, best_off.rate, "msg/s", "recording off")


if __name__ == "__main__":
    main()

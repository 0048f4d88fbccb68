"""Recording benchmark: worker → parent dispatch throughput with recording on, against off, in the same run.

Each round runs the same flood (one Service emitting N small messages to a
counting Process) twice: without a recording (the baseline) and with
``Runtime(record=...)``; the table shows the best of each and their ratio, and
the size of the recording per million messages. Usage: ``python bench/record.py [N] [ROUNDS]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

from _common import table
from dispatch import Count, Flood

from bussdcc import Runtime

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def throughput(record: str | None) -> float:
    """Messages per second from the worker through the parent's dispatch."""
    count = Count(N)
    rt = Runtime(name="bench-rec", record=record)
    rt.register_process(count)
    rt.register_service(Flood(N))
    with rt:
        assert count.done.wait(600)
    return (N - 1) / (count.last - count.first)


def main() -> None:
    folder = tempfile.mkdtemp(prefix="bench-rec-")
    path = os.path.join(folder, "run.mcap")
    off: list[float] = []
    on: list[float] = []
    size = 0
    try:
        for _ in range(ROUNDS):
            off.append(throughput(None))
            on.append(throughput(path))
            size = os.path.getsize(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    best_off, best_on = max(off), max(on)
    table(
        f"Recording: {N} messages worker → parent, best of {ROUNDS}",
        [
            (
                "dispatch msg/s, recording",
                f"{best_on:,.0f}",
                "recording off",
                f"{best_off:,.0f}",
                f"{best_on / best_off:.2f}",
            ),
            ("file MB per million messages", f"{size / N:.1f}", "", "", ""),
        ],
    )


if __name__ == "__main__":
    main()

"""What a device call costs with 8 caller threads: CPU and context switches per call, beside raw.

The same calls as ``bench/requests.py``'s 8-caller figure (8 threads each calling
``Motor.move``), against its baseline (one thread keeping 8 calls in flight on a raw
DEALER/ROUTER + msgspec pair): calls/s, then per call the CPU of the calling process
and of the device's process, and the context switches of every thread of both
(``/proc/<pid>/task/*/status``). Rounds alternate; each figure is the median of the
rounds. Usage: ``python bench/callers.py [CALLS_PER_ROUND] [ROUNDS]``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import psutil

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, table
from requests import CALLERS, Callers, Motor, Raw

from bussdcc import Runtime

CALLS = int(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else 16_000
ROUNDS = int(sys.argv[2]) if __name__ == "__main__" and len(sys.argv) > 2 else 3
FIGURES = (
    "calls/s",
    "parent CPU per call",
    "device CPU per call",
    "parent switches per call",
    "device switches per call",
)


def switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return total


def cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` so far (user + system)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def measure(seconds_for: Callable[[int], float], device: int, n: int) -> dict[str, float]:
    """Run ``n`` calls; each figure of :data:`FIGURES` for them."""
    me = os.getpid()
    c0, d0, s0, t0 = time.process_time(), cpu(device), switches(me), switches(device)
    wall = seconds_for(n)
    c1, d1, s1, t1 = time.process_time(), cpu(device), switches(me), switches(device)
    values = (n / wall, (c1 - c0) / n, (d1 - d0) / n, (s1 - s0) / n, (t1 - t0) / n)
    return dict(zip(FIGURES, values, strict=True))


def main() -> None:
    # The raw baseline forks before this process has any ZeroMQ context or thread.
    raw = Raw()
    rt = Runtime(name="bench-callers")
    rt.attach_device(Motor(id="axis-1"))
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    with rt:
        motor = rt.device(Motor, "axis-1")
        pid = next(w.pid for w in rt.workers() if w.name == "axis-1")
        assert pid is not None
        callers = Callers(motor)
        callers.seconds_for(CALLERS * 100)  # warm both up
        raw.seconds_for(CALLERS * 100, CALLERS)
        for _ in range(ROUNDS):
            theirs.append(measure(lambda n: raw.seconds_for(n, CALLERS), raw.pid, CALLS))
            ours.append(measure(callers.seconds_for, pid, CALLS))
        callers.close()
    raw.close()
    base = f"raw, {CALLERS} in flight on one thread"

    def cell(name: str, value: float) -> str:
        if name == "calls/s":
            return f"{value:,.0f}"
        return f"{value * 1e6:.1f} µs" if "CPU" in name else f"{value:.1f}"

    rows = []
    for name in FIGURES:
        a, b = median([r[name] for r in ours]), median([r[name] for r in theirs])
        rows.append((name, cell(name, a), base, cell(name, b), f"{a / b:.2f}" if b else "-"))
    table(f"{CALLERS} caller threads: {CALLS:,} calls a round, median of {ROUNDS} alternating rounds", rows)


if __name__ == "__main__":
    main()

"""Dispatch beside the seed package: bussdcc 0.42.0's in-process ``ctx.emit`` → Process, in the same run.

The seed is installed once into its own virtual environment (``bench/.seed-venv``, made on first use
with ``pip install bussdcc==0.42.0``) and measured in a subprocess of it. Beside it, alternating round
by round so both share the machine's load: this project's in-process ``rt.emit`` → Process, and a
worker's ``ctx.emit`` → a Process in the parent (``bench/dispatch.py``'s measurement). Each figure is
the median of ROUNDS rounds of N messages.
Usage: ``python bench/seed.py [--n N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, report, table
from dispatch import Count, Sample, bussdcc_throughput

from bussdcc import Runtime

SEED_VERSION = "0.42.0"
VENV = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".seed-venv")

# Runs under the seed's interpreter: its API is the seed README's (rt.processes.register, rt.ctx.emit).
SEED_SCRIPT = """
import json, sys, time
from dataclasses import dataclass
import bussdcc
from bussdcc import Message, Process, Runtime

assert bussdcc.__version__ == sys.argv[2], bussdcc.__version__
N = int(sys.argv[1])

@dataclass(slots=True, frozen=True)
class Sample(Message):
    i: int
    value: float
    unit: str

class Count(Process):
    name = "count"
    n = 0
    def handle_event(self, ctx, evt):
        if isinstance(evt.payload, Sample):
            self.n += 1

count = Count()
rt = Runtime()
rt.processes.register(count)
rt.boot()
emit = rt.ctx.emit
t0 = time.perf_counter()
for i in range(N):
    emit(Sample(i=i, value=21.5, unit="C"))
elapsed = time.perf_counter() - t0
rt.shutdown()
assert count.n == N, count.n
print(json.dumps({"rate": N / elapsed}))
"""


def seed_python() -> str:
    """The seed venv's interpreter, making the venv first if it is missing or holds another version."""
    python = os.path.join(VENV, "bin", "python")
    probe = [python, "-c", f"import bussdcc, sys; sys.exit(bussdcc.__version__ != {SEED_VERSION!r})"]
    if os.path.exists(python) and subprocess.run(probe, check=False, capture_output=True).returncode == 0:
        return python
    print(f"making {VENV} with bussdcc=={SEED_VERSION} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"bussdcc=={SEED_VERSION}"]
    subprocess.run(pip, check=True)
    subprocess.run(probe, check=True)
    return python


def seed_rate(python: str, n: int) -> float:
    """The seed's in-process ``ctx.emit`` → Process rate, in msg/s, measured in its own interpreter."""
    out = subprocess.run([python, "-c", SEED_SCRIPT, str(n), SEED_VERSION], check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def inprocess_rate(n: int) -> float:
    """This project's in-process ``rt.emit`` → Process rate (dispatched before ``emit`` returns)."""
    count = Count(0)
    rt = Runtime(name="bench-seed")
    rt.register_process(count)
    with rt:
        emit = rt.emit
        t0 = time.perf_counter()
        for i in range(n):
            emit(Sample(i=i, value=21.5, unit="C"))
        elapsed = time.perf_counter() - t0
    assert count.n == n, count.n
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="messages per round (default 100,000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = ap.parse_args()
    python = seed_python()
    seed: list[float] = []
    ours: list[float] = []
    worker: list[float] = []
    for _ in range(args.rounds):
        seed.append(seed_rate(python, args.n))
        ours.append(inprocess_rate(args.n))
        worker.append(bussdcc_throughput(args.n))
    s, o, w = median(seed), median(ours), median(worker)

    def rate(x: float) -> str:
        return f"{x:,.0f} msg/s"

    seed_name = f"seed {SEED_VERSION} in-process ctx.emit → Process"
    rows = [
        ("worker → Process", rate(w), seed_name, rate(s), f"{w / s:.2f}"),
        ("", "", "own in-process rt.emit → Process", rate(o), f"{w / o:.2f}"),
        ("in-process rt.emit → Process", rate(o), seed_name, rate(s), f"{o / s:.2f}"),
    ]  # fmt: skip
    table(f"dispatch vs the seed: {args.n:,} messages, median of {args.rounds} alternating rounds", rows)
    print(
        "spread (min-max): "
        + ", ".join(
            f"{k} {min(v):,.0f}-{max(v):,.0f}" for k, v in (("seed", seed), ("in-process", ours), ("worker", worker))
        )
    )
    report("worker_vs_seed", w, s, "msg/s", seed_name)
    report("worker_vs_inprocess", w, o, "msg/s", "own in-process rt.emit → Process")
    report("inprocess_vs_seed", o, s, "msg/s", seed_name)


if __name__ == "__main__":
    main()

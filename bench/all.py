"""Every figure of the performance table in one run, each beside its baseline (same run) and its target.

Runs, one at a time and each in its own interpreter: ``seed.py`` (dispatch beside the seed package),
``requests.py`` (device calls), ``respawn.py`` (respawn, without the heartbeat rows) and ``scale.py``
(16 to 1,024 workers). Each prints its own table as it goes and records its figures (``report`` in
``_common.py``); the summary at the end gathers them, with the target and whether it is met.
Usage: ``python bench/all.py [--quick] [--sizes 16,64,256,1024]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _common import grid

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Figure:
    """One row of the summary: which recorded figure, how it is judged."""

    label: str
    key: str
    target: str
    #: Whether the target is met, given (value, baseline); None: no target.
    met: Callable[[float, float | None], bool] | None


def ratio_at_least(x: float) -> Callable[[float, float | None], bool]:
    return lambda v, b: b is not None and v / b >= x


def ratio_at_most(x: float) -> Callable[[float, float | None], bool]:
    return lambda v, b: b is not None and v / b <= x


def value_at_most(x: float) -> Callable[[float, float | None], bool]:
    return lambda v, b: v <= x


FIGURES = [
    Figure("worker → Process dispatch vs seed in-process", "worker_vs_seed", "ratio ≥ 2", ratio_at_least(2)),
    Figure("worker → Process dispatch vs own in-process", "worker_vs_inprocess", "ratio ≥ 1", ratio_at_least(1)),
    Figure("in-process rt.emit → Process vs seed", "inprocess_vs_seed", "ratio ≥ 2", ratio_at_least(2)),
    Figure("parent → device call p50", "call_parent", "ratio ≤ 1.5", ratio_at_most(1.5)),
    Figure("Service → device call p50", "call_service", "ratio ≤ 2", ratio_at_most(2)),
    Figure("calls/s, 1 caller", "calls_1", "ratio ≥ 0.7", ratio_at_least(0.7)),
    Figure("calls/s, 8 callers", "calls_8", "ratio ≥ 0.5", ratio_at_least(0.5)),
    Figure("respawn p50 (SIGKILL → ready)", "respawn", "ratio ≤ 2", ratio_at_most(2)),
    Figure("respawn p50, worker with a hot spare", "respawn_spare", "ratio ≤ 2", ratio_at_most(2)),
    Figure("boot, 256 workers", "boot_256", "≤ 1 s", value_at_most(1.0)),
    Figure("shutdown, 256 workers", "shutdown_256", "≤ 1 s", value_at_most(1.0)),
    Figure("parent CPU, 64 workers idle", "idle_cpu_64", "-", None),
    Figure("parent CPU, 256 workers idle", "idle_cpu_256", "< 1 % of a core", lambda v, b: v < 1.0),
    Figure("USS per idle worker (64 workers)", "uss_64", "≤ 3 MiB", value_at_most(3 * 2**20)),
]


def fmt(value: float | None, unit: str) -> str:
    """A figure in a readable unit."""
    if value is None:
        return ""
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:,.0f} µs"
        if value < 1:
            return f"{value * 1e3:,.1f} ms"
        return f"{value:.2f} s"
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    if unit == "% of a core":
        return f"{value:.2f} %"
    return f"{value:,.0f} {unit}"


def run(script: str, args: list[str], results: str) -> float:
    """Run one benchmark script to its end (its output shown as it goes); its wall time."""
    print(f"\n===== bench/{script} {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    env = {**os.environ, "BENCH_RESULTS": results}
    code = subprocess.run([sys.executable, os.path.join(HERE, script), *args], check=False, env=env).returncode
    took = time.monotonic() - t0
    print(f"===== bench/{script}: exit {code}, {took:.0f} s", flush=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples: shows the scripts work, not figures")
    ap.add_argument("--sizes", help="worker counts for scale.py (default 16,64,256,1024; --quick 16,64,256)")
    args = ap.parse_args()
    sizes = args.sizes or ("16,64,256" if args.quick else "16,64,256,1024")
    if args.quick:
        plan = [
            ("seed.py", ["--n", "30000", "--rounds", "1"]),
            ("requests.py", ["500"]),
            ("respawn.py", ["20", "--no-heartbeat"]),
            ("scale.py", ["--sizes", sizes, "--idle", "3", "--total", "30000"]),
        ]
    else:
        plan = [
            ("seed.py", ["--n", "100000", "--rounds", "3"]),
            ("requests.py", ["2000"]),
            ("respawn.py", ["50", "--no-heartbeat"]),
            ("scale.py", ["--sizes", sizes, "--idle", "10", "--total", "100000"]),
        ]
    started = time.monotonic()
    fd, results = tempfile.mkstemp(prefix="bench-", suffix=".jsonl")
    os.close(fd)
    try:
        for script, script_args in plan:
            run(script, script_args, results)
        with open(results) as f:
            recorded: dict[str, dict[str, Any]] = {r["key"]: r for r in map(json.loads, f)}
    finally:
        os.unlink(results)
    rows = []
    for fig in FIGURES:
        r = recorded.get(fig.key)
        if r is None:
            rows.append((fig.label, "not measured", "", "", "", fig.target, "?"))
            continue
        value, baseline, unit = r["value"], r["baseline"], r["unit"]
        ratio = f"{value / baseline:.2f}" if baseline else ""
        met = "" if fig.met is None else ("yes" if fig.met(value, baseline) else "NO")
        rows.append((fig.label, fmt(value, unit), r["basis"], fmt(baseline, unit), ratio, fig.target, met))
    head = ("figure", "bussdcc", "baseline (same run)", "baseline", "ratio", "target", "met?")
    load = os.getloadavg()
    grid(
        f"summary: {time.monotonic() - started:.0f} s, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        head,
        rows,
    )


if __name__ == "__main__":
    main()

"""Shared bits of the benchmarks: timing helpers and the table printer."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``samples``."""
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(samples: Sequence[float]) -> float:
    """The median of ``samples``."""
    return statistics.median(samples)


def short_tmp() -> str:
    """A short private directory for ipc:// sockets."""
    return tempfile.mkdtemp(prefix="bb-", dir="/tmp")


def table(title: str, rows: list[tuple[str, str, str, str, str]]) -> None:
    """Print rows of (metric, bussdcc, baseline name, baseline, ratio) as an aligned table."""
    head = ("metric", "bussdcc", "baseline (same run)", "baseline", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}  (pid {os.getpid()}, {os.cpu_count()} cores)")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print(line)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def report(key: str, value: float, baseline: float | None = None, unit: str = "", basis: str = "") -> None:
    """Record one figure for ``bench/all.py``'s summary: a JSON line in the file named by $BENCH_RESULTS.

    ``value`` and ``baseline`` are in ``unit``; ``basis`` names the baseline. Nothing happens when the
    script runs on its own (the variable unset).
    """
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    row = {"key": key, "value": value, "baseline": baseline, "unit": unit, "basis": basis}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def grid(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table of any number of columns, aligned (the first column left, the rest right)."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}  (pid {os.getpid()}, {os.cpu_count()} cores)")

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))

"""What a Prometheus scrape every second costs the parent of a system of many workers.

A runtime with WORKERS idle services serves ``/metrics``; the parent's CPU time
(all its threads, not the workers') is measured over windows of SECONDS without
any scrape (the baseline, same run) and with a scraper in another process
fetching ``/metrics`` once a second, alternately, ROUNDS times each. The target:
scraping costs the parent under 1 % of a core beyond idle.
Usage: ``python bench/scrape.py [WORKERS] [SECONDS] [ROUNDS]`` (defaults 64, 30, 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, percentile, short_tmp, table

from bussdcc import Context, Runtime, Service

WORKERS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 2

# Runs in its own process, so that its CPU is not the parent's: one GET a second, on the second.
SCRAPER = """
import json, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
took, size, start = [], 0, time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        size = len(resp.read())
    took.append(time.perf_counter() - t0)
    n += 1
    time.sleep(max(0.0, start + n - time.monotonic()))
print(json.dumps({"took": took, "size": size}))
"""


class Idle(Service):
    """A service that does nothing between rare ticks."""

    interval = 3600.0

    def __init__(self, name: str) -> None:
        self.name = name

    def tick(self, ctx: Context) -> None:
        pass


def cpu_over(seconds: float, scrape_url: str | None) -> tuple[float, dict[str, object] | None]:
    """The parent's CPU use in percent of one core over ``seconds`` (scraped meanwhile, if a URL is given)."""
    scraper = None
    if scrape_url is not None:
        scraper = subprocess.Popen(
            [sys.executable, "-c", SCRAPER, scrape_url, str(seconds)], stdout=subprocess.PIPE, text=True
        )
    cpu0, wall0 = time.process_time(), time.monotonic()
    if scraper is not None:
        out, _ = scraper.communicate()
        report: dict[str, object] | None = json.loads(out)
    else:
        time.sleep(seconds)
        report = None
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return 100.0 * cpu / wall, report


def main() -> None:
    os.environ.setdefault("BUSSDCC_RUN_BASE", short_tmp())
    rt = Runtime(name="bench-scrape", http="127.0.0.1:0")
    for i in range(WORKERS):
        rt.add_worker(Idle(f"idle-{i}"))
    with rt:
        address = rt.http_address
        assert address is not None
        url = f"http://{address[0]}:{address[1]}/metrics"
        time.sleep(min(5.0, SECONDS))  # past boot, and past the first watchdog samples
        with urllib.request.urlopen(url, timeout=60) as resp:  # once: the library's import is not a scrape's cost
            resp.read()
        cpu_idle: list[float] = []
        cpu_scraped: list[float] = []
        took: list[float] = []
        size = 0
        for _ in range(ROUNDS):
            idle, _ = cpu_over(SECONDS, None)
            cpu_idle.append(idle)
            scraped, report = cpu_over(SECONDS, url)
            cpu_scraped.append(scraped)
            assert report is not None
            took.extend(report["took"])  # type: ignore[arg-type]
            size = int(report["size"])  # type: ignore[call-overload]
    idle_cpu, scraped_cpu = median(cpu_idle), median(cpu_scraped)
    extra = scraped_cpu - idle_cpu
    rows = [
        (
            "parent CPU, % of a core",
            f"{scraped_cpu:.2f} (scraped 1/s)",
            "not scraped",
            f"{idle_cpu:.2f}",
            f"{scraped_cpu / idle_cpu:.2f}x" if idle_cpu > 0 else "-",
        ),
        ("scraping's cost, % of a core", f"{extra:.2f}", "target", "< 1.00", "met" if extra < 1.0 else "NOT met"),
        (
            "scrape latency p50 / p99",
            f"{median(took) * 1e3:.1f} / {percentile(took, 99) * 1e3:.1f} ms",
            "interval",
            "1000 ms",
            f"{median(took):.3f}",
        ),
        ("exposition size", f"{size / 1024:.1f} KiB", "workers", str(WORKERS), "-"),
    ]
    table(f"Scrape cost: {WORKERS} workers, {ROUNDS} x {SECONDS:g} s windows each way", rows)


if __name__ == "__main__":
    main()

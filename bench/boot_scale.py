"""Boot, shutdown and idle cost of many workers, beside as many bare forks in the same run.

For each N (half devices, half services): the time ``boot()`` takes until every
worker is ready, the parent's CPU while they idle (psutil ``cpu_times`` of this
process over a window), the USS of an idle worker, and the time ``shutdown()``
takes. The baseline is N bare ``os.fork`` children that each say they are up
through a pipe (and are then told to exit). Usage:
``python bench/boot_scale.py [N ...] [--idle SECONDS] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, table

from bussdcc import Device, Runtime, Service


class Idle(Service):
    name = "idle"
    interval = 3600.0

    def __init__(self, name: str) -> None:
        self.name = name


class Sensor(Device):
    kind = "bench.sensor"

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


def bare_forks(n: int) -> tuple[float, float]:
    """(start, stop) seconds for ``n`` children that each write a byte when up, then exit when told."""
    up_r, up_w = os.pipe()
    go_r, go_w = os.pipe()
    t0 = time.perf_counter()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(up_r)
            os.close(go_w)
            os.write(up_w, b"x")
            os.read(go_r, 1)
            os._exit(0)
        pids.append(pid)
    got = 0
    while got < n:
        got += len(os.read(up_r, n - got))
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    os.close(go_w)  # EOF: every child's read returns
    for pid in pids:
        os.waitpid(pid, 0)
    stopped = time.perf_counter() - t1
    for fd in (up_r, up_w, go_r):
        os.close(fd)
    return started, stopped


def bussdcc_run(n: int, idle: float) -> tuple[float, float, float, float]:
    """(boot s, idle parent CPU % of a core, USS MiB per worker, shutdown s)."""
    rt = Runtime(name=f"bench-scale-{n}")
    for k in range(n // 2):
        rt.attach_device(Sensor(id=f"sensor-{k}"))
    for k in range(n - n // 2):
        rt.register_service(Idle(f"idle-{k}"))
    t0 = time.perf_counter()
    rt.boot()
    booted = time.perf_counter() - t0
    try:
        assert all(w.state == "running" for w in rt.workers()), [w.state for w in rt.workers()]
        me = psutil.Process()
        time.sleep(min(1.0, idle))  # let the boot's own work finish
        c0, w0 = me.cpu_times(), time.perf_counter()
        time.sleep(idle)
        c1, w1 = me.cpu_times(), time.perf_counter()
        cpu = ((c1.user + c1.system) - (c0.user + c0.system)) / (w1 - w0) * 100.0
        uss = []
        for w in rt.workers()[:16]:
            if w.pid:
                try:
                    uss.append(psutil.Process(w.pid).memory_full_info().uss / 2**20)
                except psutil.Error:
                    pass
    finally:
        t1 = time.perf_counter()
        rt.shutdown()
        stopped = time.perf_counter() - t1
    return booted, cpu, median(uss) if uss else float("nan"), stopped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[64, 256])
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    for n in args.sizes:
        boots, stops, cpus, usss, fstarts, fstops = [], [], [], [], [], []
        for _ in range(args.rounds):
            fs, fst = bare_forks(n)
            fstarts.append(fs)
            fstops.append(fst)
            b, c, u, s = bussdcc_run(n, args.idle)
            boots.append(b)
            cpus.append(c)
            usss.append(u)
            stops.append(s)
        b, s, fs, fst = median(boots), median(stops), median(fstarts), median(fstops)
        rows = [
            ("boot", f"{b * 1e3:.0f} ms", f"{n} bare forks up", f"{fs * 1e3:.0f} ms", f"{b / fs:.1f}"),
            ("shutdown", f"{s * 1e3:.0f} ms", f"{n} bare forks told to exit", f"{fst * 1e3:.0f} ms", f"{s / fst:.1f}"),
            (f"parent CPU, idle {args.idle:g}s", f"{median(cpus):.2f} % of a core", "", "", ""),
            ("USS per idle worker", f"{median(usss):.2f} MiB", "", "", ""),
        ]
        table(f"scale: {n} workers ({n // 2} devices, {n - n // 2} services), median of {args.rounds}", rows)


if __name__ == "__main__":
    main()

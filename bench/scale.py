"""How the runtime's costs grow with the number of workers: 16, 64, 256, 1,024 (half Devices, half Services).

Each size runs in a fresh interpreter (so one size's memory and descriptors do not weigh on the next)
and measures, in order:
  1. the baseline: N bare ``os.fork`` children that each report ready on a pipe (their boot), then
     all told to exit at once and reaped (their shutdown), and the USS of a few of them;
  2. ``Runtime.boot()`` with N/2 idle Devices and N/2 Services (``boot`` returns once every worker is
     ready), the parent's CPU over an idle window (% of one core, all its threads), its RSS and
     descriptors, and the USS of a sample of idle workers;
  3. dispatch throughput with all N/2 Services emitting at once: each waits in its first ``tick`` on a
     shared file lock (no CPU while idle), the parent releases it, and a Process counts TOTAL messages
     (TOTAL / (N/2) from each Service), first to last received;
  4. ``Runtime.shutdown()``.
The growth table divides each figure by the smallest size's, beside the growth of N itself.
The soft descriptor limit is raised to the hard one; a size the machine cannot hold is skipped, saying why.
Usage: ``python bench/scale.py [--sizes 16,64,256,1024] [--idle SECONDS] [--total MESSAGES]``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(__file__))

from _common import grid, median, report

from bussdcc import Context, Device, Event, Message, Process, Runtime, Service

#: Descriptors the parent needs per worker, and fixed (measured: well under these; kept generous).
FDS_PER_WORKER = 4
FDS_FIXED = 200
#: Workers whose USS is read (smaps is slow to read; a sample is enough).
USS_SAMPLE = 16


@dataclass(slots=True, frozen=True)
class Sample(Message):
    """A typical small telemetry message."""

    name = "bench.scale.sample"
    i: int
    value: float


class Idle(Device):
    kind = "idle"


class Emitter(Service):
    """Waits in its first tick for the shared lock to be released, then emits its share, once."""

    interval = 3600.0
    tick_timeout = 3600.0

    def __init__(self, name: str, gate: str, count: int) -> None:
        self.name = name
        self.gate = gate
        self.count = count

    def tick(self, ctx: Context) -> None:
        if self.count <= 0:
            return
        fd = os.open(self.gate, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # blocks, without CPU, until the parent lets go
        finally:
            os.close(fd)
        for i in range(self.count):
            ctx.emit(Sample(i=i, value=21.5))
        self.count = 0


class Count(Process):
    name = "count"

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.first = self.last = 0.0
        self.done = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Sample):
            self.n += 1
            if self.n == 1:
                self.first = time.perf_counter()
            if self.n == self.total:
                self.last = time.perf_counter()
                self.done.set()


def uss(pids: list[int]) -> float:
    """Median USS in bytes of up to USS_SAMPLE of ``pids``."""
    step = max(1, len(pids) // USS_SAMPLE)
    values = []
    for pid in pids[::step][:USS_SAMPLE]:
        try:
            values.append(psutil.Process(pid).memory_full_info().uss)
        except psutil.Error:
            pass
    return median(values) if values else float("nan")


def _forks(n: int, hold: Callable[[int], object] | None = None) -> dict[str, float]:
    """N forks (each running ``hold(stop fd)`` first, if given): until all are ready; their USS;
    until all have exited once told to."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pids = []
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(stop_w)
            os.close(ready_r)
            kept = hold(stop_r) if hold is not None else None  # alive until the child exits
            os.write(ready_w, b"r")
            os.read(stop_r, 1)  # EOF once the parent closes its end
            del kept
            os._exit(0)
        pids.append(pid)
    got = 0
    while got < n:
        got += len(os.read(ready_r, n - got))
    ready = time.perf_counter() - t0
    if hold is not None:
        time.sleep(0.2)  # let their threads settle
    child_uss = uss(pids)
    t0 = time.perf_counter()
    os.close(stop_w)
    for pid in pids:
        os.waitpid(pid, 0)
    stop = time.perf_counter() - t0
    for fd in (ready_r, ready_w, stop_r):
        os.close(fd)
    return {"ready": ready, "stop": stop, "uss": child_uss}


def _with_zmq(stop_r: int) -> object:
    """What any ZeroMQ worker holds: a context, a connected socket, one thread of its own."""
    import zmq

    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    sock.connect("ipc:///nonexistent/bench-scale")
    threading.Thread(target=os.read, args=(stop_r, 1), daemon=True).start()
    return ctx, sock


def bare_forks(n: int) -> dict[str, float]:
    """N bare forks (boot, exit, USS), and the USS of a few that hold a ZeroMQ context and socket."""
    bare = _forks(n)
    with_zmq = _forks(4, _with_zmq)
    return {"bare_boot": bare["ready"], "bare_stop": bare["stop"], "bare_uss": bare["uss"], "zmq_uss": with_zmq["uss"]}


def one_size(n: int, idle: float, total: int) -> dict[str, Any]:
    """Everything for one size, in this (fresh) process."""
    out: dict[str, Any] = {"n": n, **bare_forks(n)}
    me = psutil.Process()
    services = n // 2
    share = total // services
    gate_dir = tempfile.mkdtemp(prefix="bb-scale-", dir="/tmp")
    gate = os.path.join(gate_dir, "gate")
    gate_fd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(gate_fd, fcntl.LOCK_EX)
    count = Count(share * services)
    rt = Runtime(name=f"bench-scale-{n}")
    rt.register_process(count)
    for i in range(n - services):
        rt.attach_device(Idle(id=f"dev-{i}"))
    for i in range(services):
        rt.register_service(Emitter(f"svc-{i}", gate, share))
    try:
        t0 = time.perf_counter()
        rt.boot()
        out["boot"] = time.perf_counter() - t0
        statuses = rt.workers()
        out["running"] = sum(1 for w in statuses if w.pid is not None)
        time.sleep(1.0)  # let boot's aftermath settle
        # CPU of all the parent's threads: process_time reads CLOCK_PROCESS_CPUTIME_ID (nanoseconds), where
        # psutil's cpu_times counts 10 ms clock ticks (0.2 % of a core over 5 s). psutil's figure is kept beside it.
        c0, p0, w0 = time.process_time(), me.cpu_times(), time.perf_counter()
        time.sleep(idle)
        c1, p1, w1 = time.process_time(), me.cpu_times(), time.perf_counter()
        out["idle_cpu"] = (c1 - c0) / (w1 - w0)
        out["idle_cpu_psutil"] = ((p1.user - p0.user) + (p1.system - p0.system)) / (w1 - w0)
        out["rss"] = me.memory_info().rss
        out["fds"] = me.num_fds()
        out["uss"] = uss([w.pid for w in statuses if w.pid is not None])
        t0 = time.perf_counter()
        fcntl.flock(gate_fd, fcntl.LOCK_UN)
        if not count.done.wait(300):
            raise SystemExit(f"{n} workers: only {count.n} of {count.total} messages arrived in 300 s")
        out["throughput"] = (count.total - 1) / (count.last - count.first)
        out["flood_wall"] = count.last - t0
        time.sleep(0.5)  # the Services' ticks have returned: idle again
        t0 = time.perf_counter()
        rt.shutdown()
        out["shutdown"] = time.perf_counter() - t0
    finally:
        rt.shutdown()
        os.close(gate_fd)
        shutil.rmtree(gate_dir, ignore_errors=True)
    return out


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cannot_hold(n: int, fd_limit: int) -> str | None:
    """Why this machine cannot hold ``n`` workers, or None."""
    need = FDS_FIXED + FDS_PER_WORKER * n
    if fd_limit != resource.RLIM_INFINITY and fd_limit < need:
        return f"descriptor limit {fd_limit} < ~{need} needed (raise the hard limit: ulimit -Hn)"
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if nproc != resource.RLIM_INFINITY and nproc < 2 * n + 100:
        return f"process limit {nproc} < {2 * n + 100} (N workers + N bare forks)"
    free = psutil.virtual_memory().available
    if free < n * 8 * 1024 * 1024:
        return f"{free / 2**20:,.0f} MiB available < ~{n * 8} MiB"
    return None


def run_size(n: int, idle: float, total: int) -> dict[str, Any] | str:
    """One size in a fresh interpreter: its figures, or the reason it failed."""
    cmd = [sys.executable, __file__, "--one", str(n), "--idle", str(idle), "--total", str(total)]
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True, timeout=900)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    return f"failed (exit {proc.returncode}): {proc.stdout.strip()[-300:]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,64,256,1024", help="comma-separated worker counts (default 16,64,256,1024)")
    ap.add_argument("--idle", type=float, default=10.0, help="idle window in seconds (default 10)")
    ap.add_argument("--total", type=int, default=100_000, help="messages in the throughput phase (default 100,000)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    fd_limit = raise_fd_limit()
    if args.one is not None:
        print("RESULT " + json.dumps(one_size(args.one, args.idle, args.total)), flush=True)
        return
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"--sizes: comma-separated integers, not {args.sizes!r}") from None
    if not sizes or min(sizes) < 2:
        raise SystemExit("--sizes: every size must be at least 2 (half Devices, half Services)")
    results: list[dict[str, Any]] = []
    for n in sizes:
        why = cannot_hold(n, fd_limit)
        if why is None:
            print(f"scale: {n} workers ...", flush=True)
            got = run_size(n, args.idle, args.total)
            if isinstance(got, str):
                why = got
            else:
                results.append(got)
        if why is not None:
            print(f"scale: {n} workers SKIPPED: {why}", flush=True)
    if not results:
        raise SystemExit("scale: no size ran")

    def s(x: float) -> str:
        return f"{x:.3f} s"

    def mib(x: float) -> str:
        return f"{x / 2**20:.1f} MiB"

    head = (
        "workers",
        "boot",
        "N bare forks",
        "ratio",
        "shutdown",
        "bare exit",
        "ratio",
        "idle CPU",
        "parent RSS",
        "fds",
        "USS/worker",
        "bare fork USS",
        "fork+ZeroMQ USS",
        "throughput",
    )
    rows = [
        (f"{r['n']:,}", s(r["boot"]), s(r["bare_boot"]), f"{r['boot'] / r['bare_boot']:.1f}", s(r["shutdown"]), s(r["bare_stop"]), f"{r['shutdown'] / r['bare_stop']:.1f}", f"{r['idle_cpu']:.2%}", mib(r["rss"]), str(r["fds"]), mib(r["uss"]), mib(r["bare_uss"]), mib(r["zmq_uss"]), f"{r['throughput']:,.0f} msg/s")
        for r in results
    ]  # fmt: skip
    grid(
        f"scale: half Devices, half Services; idle window {args.idle:g} s; {args.total:,} messages from N/2 Services at once",
        head,
        rows,
    )
    base = results[0]
    growth_head = ("workers", "N growth", "boot", "shutdown", "idle CPU", "parent RSS", "throughput")
    growth = [
        (f"{r['n']:,}", f"{r['n'] / base['n']:.0f}x", f"{r['boot'] / base['boot']:.1f}x", f"{r['shutdown'] / base['shutdown']:.1f}x", f"{r['idle_cpu'] / base['idle_cpu']:.1f}x" if base["idle_cpu"] > 0 else "-", f"{r['rss'] / base['rss']:.2f}x", f"{r['throughput'] / base['throughput']:.2f}x")
        for r in results
    ]  # fmt: skip
    grid(f"growth against the {base['n']}-worker figures (same run)", growth_head, growth)
    bare = f"{base['n']} workers (same run)"
    for r in results:
        n = r["n"]
        report(f"boot_{n}", r["boot"], r["bare_boot"], "s", f"{n} bare os.fork, ready on a pipe")
        report(f"shutdown_{n}", r["shutdown"], r["bare_stop"], "s", f"{n} bare forks told to exit, reaped")
        report(f"idle_cpu_{n}", r["idle_cpu"] * 100, base["idle_cpu"] * 100, "% of a core", bare)
        report(f"rss_{n}", r["rss"], base["rss"], "B", bare)
        report(f"throughput_{n}", r["throughput"], base["throughput"], "msg/s", bare)
        report(f"uss_{n}", r["uss"], r["bare_uss"], "B", "a bare os.fork child")


if __name__ == "__main__":
    main()

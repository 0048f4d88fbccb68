"""Respawn benchmark: SIGKILL a worker, measure until its replacement is ready.

Reports detection latency (kill → ``worker.exited`` dispatched) and respawn
latency (kill → the new incarnation's ``worker.started``), p50/p90 over KILLS
kills (also for a worker with a hot spare: ``spare = True``), beside two ways of starting a fresh worker measured in the same run:
``multiprocessing`` (fork) to a READY message, and a new interpreter that
imports bussdcc. Then the cost of heartbeats: worker → Process throughput
with heartbeats off, at the default interval, and at 100 per second.
A bare ``os.fork`` whose child writes one byte to a pipe is the floor a respawn is compared with.
Usage: ``python bench/respawn.py [KILLS] [--no-heartbeat]`` (the flag skips the heartbeat rows).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, percentile, report, table

from bussdcc import Context, Event, Message, Process, Runtime, Service, message

_ARGS = [a for a in sys.argv[1:] if not a.startswith("--")] if __name__ == "__main__" else []
KILLS = int(_ARGS[0]) if _ARGS else 50
HEARTBEAT = "--no-heartbeat" not in sys.argv
FLOOD = 100_000
ROUNDS = 5


class Victim(Service):
    name = "victim"
    interval = 3600
    max_restarts = 1_000_000
    restart_window = 1.0
    backoff_initial = 0.0  # measure the respawn itself, not the crash-loop policy


class HotVictim(Victim):
    """The same, with a hot spare: its respawn is a Go to a process forked ahead."""

    name = "victim-hot"
    spare = True


class Watch(Process):
    name = "watch"

    def __init__(self) -> None:
        self.exited: dict[int, float] = {}
        self.started: dict[int, tuple[int, float]] = {}  # incarnation -> (pid, when)
        self.cond = threading.Condition()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        now = time.perf_counter()
        msg = evt.payload
        with self.cond:
            if isinstance(msg, message.WorkerExited):
                self.exited[msg.incarnation] = now
            elif isinstance(msg, message.WorkerStarted):
                self.started[msg.incarnation] = (msg.pid, now)
            self.cond.notify_all()

    def wait_started(self, incarnation: int) -> tuple[int, float]:
        with self.cond:
            assert self.cond.wait_for(lambda: incarnation in self.started, 10)
            return self.started[incarnation]


def bussdcc_respawns(victim: Victim) -> tuple[list[float], list[float]]:
    watch = Watch()
    rt = Runtime(name="bench-respawn")
    rt.register_process(watch)
    rt.register_service(victim)
    detect, ready = [], []
    with rt:
        for inc in range(1, KILLS + 1):
            pid, _ = watch.wait_started(inc)
            if victim.spare:
                spare_waiting(rt, victim.name)  # as a crash long after the last would find it
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            _, again = watch.wait_started(inc + 1)
            detect.append(watch.exited[inc] - t0)
            ready.append(again - t0)
    return detect, ready


def spare_waiting(rt: Runtime, name: str) -> None:
    """Until ``name``'s spare has said hello and waits at its gate."""
    parts = rt._parts
    assert parts is not None
    worker = parts.supervisor.workers[name]
    deadline = time.monotonic() + 10
    while (spare := worker.spare) is None or not spare.hello:
        assert time.monotonic() < deadline, "no spare came"
        time.sleep(0.001)


@dataclass(slots=True, frozen=True)
class Sample(Message):
    """A typical small telemetry message."""

    name = "bench.respawn.sample"
    i: int
    value: float


class Flood(Service):
    name = "flood"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        for i in range(FLOOD):
            ctx.emit(Sample(i=i, value=21.5))


class Count(Process):
    name = "count"

    def __init__(self) -> None:
        self.n = 0
        self.first = self.last = 0.0
        self.done = threading.Event()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Sample):
            self.n += 1
            if self.n == 1:
                self.first = time.perf_counter()
            elif self.n == FLOOD:
                self.last = time.perf_counter()
                self.done.set()


def throughput(heartbeat_interval: float) -> float:
    count = Count()
    flood = Flood()
    flood.heartbeat_interval = heartbeat_interval
    rt = Runtime(name="bench-heartbeat")
    rt.register_process(count)
    rt.register_service(flood)
    with rt:
        assert count.done.wait(120)
    return (FLOOD - 1) / (count.last - count.first)


def heartbeat_costs() -> dict[float, float]:
    """Median throughput per heartbeat interval, the settings interleaved round by round."""
    runs: dict[float, list[float]] = {0.0: [], Flood.heartbeat_interval: [], 0.01: []}
    for _ in range(ROUNDS):
        for interval, results in runs.items():
            results.append(throughput(interval))
    return {interval: median(results) for interval, results in runs.items()}


def _child(conn: Connection) -> None:
    conn.send("ready")


def bare_fork_starts() -> list[float]:
    """A bare ``os.fork``: until the child's first byte arrives on a pipe."""
    out = []
    for _ in range(KILLS):
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"r")
            os._exit(0)
        os.read(r, 1)
        out.append(time.perf_counter() - t0)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    return out


def _victim(ready: int, threads: bool) -> None:
    """A child to kill: with ``threads``, holding what a worker holds (a ZeroMQ context, helper threads)."""
    if threads:
        import zmq

        ctx = zmq.Context(io_threads=1)
        sock = ctx.socket(zmq.DEALER)
        sock.connect("ipc:///nonexistent/bench-respawn")
        for _ in range(3):
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        _keep.append((ctx, sock, bytearray(3 << 20)))  # and a few MiB written, like a worker's heap
    os.write(ready, b"r")
    time.sleep(3600)
    os._exit(0)


_keep: list[object] = []


def bare_respawns(threads: bool) -> tuple[list[float], list[float]]:
    """What a supervisor that does nothing else pays: SIGKILL a child → its pidfd readable → a new fork's first byte.

    Returns (kill → death seen, kill → the replacement's byte). ``threads``: the killed child holds
    what a worker holds, so its teardown costs what a worker's does.
    """
    seen, again = [], []
    for _ in range(KILLS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _victim(w, threads)
        os.read(r, 1)
        fd = os.pidfd_open(pid)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        select.select([fd], [], [])
        t1 = time.perf_counter()
        new = os.fork()
        if new == 0:
            os.write(w, b"r")
            os._exit(0)
        os.read(r, 1)
        t2 = time.perf_counter()
        seen.append(t1 - t0)
        again.append(t2 - t0)
        os.waitpid(pid, 0)
        os.waitpid(new, 0)
        for f in (fd, r, w):
            os.close(f)
    return seen, again


def mp_fork_starts() -> list[float]:
    ctx = multiprocessing.get_context("fork")
    out = []
    for _ in range(KILLS):
        a, b = ctx.Pipe()
        t0 = time.perf_counter()
        p = ctx.Process(target=_child, args=(b,))
        p.start()
        assert a.recv() == "ready"
        out.append(time.perf_counter() - t0)
        p.join()
        a.close()
        b.close()
    return out


def fresh_interpreter_starts() -> list[float]:
    out = []
    for _ in range(min(KILLS, 20)):
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", "import bussdcc, zmq; print('ready')"]
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    # Baselines first: multiprocessing forks this process, best done before any runtime threads exist.
    bare = bare_fork_starts()
    _, bare_again = bare_respawns(threads=False)
    worker_like_seen, worker_like_again = bare_respawns(threads=True)
    mp = mp_fork_starts()
    fresh = fresh_interpreter_starts()
    detect, ready = bussdcc_respawns(Victim())
    _, hot = bussdcc_respawns(HotVictim())

    def ms(x: float) -> str:
        return f"{x * 1e3:.2f} ms"

    r50, r90 = median(ready), percentile(ready, 90)
    rows = [
        ("detection p50 (kill → worker.exited)", ms(median(detect)), "", "", ""),
        ("detection p90", ms(percentile(detect, 90)), "", "", ""),
        ("respawn p50 (kill → ready)", ms(r50), "bare os.fork → a byte on a pipe", ms(median(bare)), f"{r50 / median(bare):.2f}"),
        ("", "", "multiprocessing fork → READY", ms(median(mp)), f"{r50 / median(mp):.2f}"),
        ("", "", "fresh interpreter, import bussdcc", ms(median(fresh)), f"{r50 / median(fresh):.2f}"),
        ("", "", "bare respawn: kill → pidfd → fork → byte", ms(median(bare_again)), f"{r50 / median(bare_again):.2f}"),
        ("", "", "the same, the killed child worker-like", ms(median(worker_like_again)), f"{r50 / median(worker_like_again):.2f}"),
        ("respawn p50 (kill → ready), with a hot spare", ms(median(hot)), "bare os.fork → a byte on a pipe", ms(median(bare)), f"{median(hot) / median(bare):.2f}"),
        ("", "", "bare respawn: kill → pidfd → fork → byte", ms(median(bare_again)), f"{median(hot) / median(bare_again):.2f}"),
        ("respawn p90", ms(r90), "multiprocessing fork → READY", ms(percentile(mp, 90)), f"{r90 / percentile(mp, 90):.2f}"),
        ("kill → death seen (its pidfd)", "", "a worker-like child", ms(median(worker_like_seen)), ""),
    ]  # fmt: skip
    table(f"respawn: {KILLS} SIGKILLs", rows)
    print(f"\ntarget: respawn p50 < 20 ms -> {r50 * 1e3:.2f} ms ({'met' if r50 < 0.020 else 'NOT met'})")
    report("respawn", r50, median(bare), "s", "bare os.fork → a byte on a pipe")
    report("respawn_spare", median(hot), median(bare), "s", "bare os.fork → a byte on a pipe")
    report("detection", median(detect), None, "s")
    if not HEARTBEAT:
        return

    costs = heartbeat_costs()
    off = costs[0.0]

    def rate(x: float) -> str:
        return f"{x / 1e3:.0f}k msg/s"

    rows = [
        (f"heartbeat every {interval:g}s{' (default)' if interval == Flood.heartbeat_interval else ''}", rate(tp), "heartbeats off", rate(off), f"{tp / off:.2f}")
        for interval, tp in costs.items()
        if interval
    ]  # fmt: skip
    table(f"heartbeat cost: worker → Process throughput, {FLOOD} messages, median of {ROUNDS}", rows)


if __name__ == "__main__":
    main()

"""What a device call costs besides its latency, and where a respawn's time goes.

Calls: CPU per call of the parent (all its threads) and of the device's process, and context switches
per call (every thread of both), beside a raw DEALER/ROUTER + msgspec pair doing the same calls, in
alternating rounds. Respawn: SIGKILL → ``worker.exited`` dispatched → ``attach()`` running in the new
worker (``perf_counter`` is CLOCK_MONOTONIC, the same clock in every process) → ``worker.started``
dispatched. Usage: ``python bench/costs.py [CALLS] [KILLS]``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

sys.path.insert(0, os.path.dirname(__file__))

from _common import median, table
from requests import Motor, Raw, round_trips
from respawn import Watch

from bussdcc import Context, Event, Message, Runtime, Service

CALLS = int(sys.argv[1]) if __name__ == "__main__" and len(sys.argv) > 1 else 3000
KILLS = int(sys.argv[2]) if __name__ == "__main__" and len(sys.argv) > 2 else 40
ROUNDS = 3


def switches(pid: int) -> int:
    """Context switches so far, voluntary and not, of every thread of ``pid``."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return n


@dataclass
class CallCost:
    parent_cpu: float
    child_cpu: float
    switches: float
    wall: float


def call_cost(calls: Callable[[], object], child_pid: int) -> CallCost:
    """Per call of ``calls()`` (CALLS calls): CPU here and in ``child_pid``, context switches, wall time."""
    child = psutil.Process(child_pid)
    me = os.getpid()
    s0, c0, p0, w0 = switches(me) + switches(child_pid), time.process_time(), child.cpu_times(), time.perf_counter()
    calls()
    s1, c1, p1, w1 = switches(me) + switches(child_pid), time.process_time(), child.cpu_times(), time.perf_counter()
    child_cpu = (p1.user + p1.system) - (p0.user + p0.system)
    return CallCost((c1 - c0) / CALLS, child_cpu / CALLS, (s1 - s0) / CALLS, (w1 - w0) / CALLS)


def call_costs() -> tuple[list[CallCost], list[CallCost]]:
    raw = Raw()  # forks before this process has any ZeroMQ context or thread
    rt = Runtime(name="bench-costs")
    rt.attach_device(Motor(id="axis-1"))
    ours: list[CallCost] = []
    base: list[CallCost] = []
    with rt:
        motor = rt.device(Motor, "axis-1")
        pid = next(w.pid for w in rt.workers() if w.name == "axis-1")
        assert pid is not None
        raw.round_trips(300)
        round_trips(motor, 300)
        for _ in range(ROUNDS):
            base.append(call_cost(lambda: raw.round_trips(CALLS), raw.pid))
            ours.append(call_cost(lambda: round_trips(motor, CALLS), pid))
    raw.close()
    return ours, base


@dataclass(slots=True, frozen=True)
class Began(Message):
    """A new incarnation's ``attach()`` ran at ``t`` (``perf_counter``)."""

    name = "bench.costs.began"
    t: float


class Victim(Service):
    name = "victim"
    interval = 3600
    max_restarts = 1_000_000
    restart_window = 1.0
    backoff_initial = 0.0

    def attach(self, ctx: Context) -> None:
        self.t_attach = time.perf_counter()
        super().attach(ctx)

    def start(self, ctx: Context) -> None:
        ctx.emit(Began(t=self.t_attach))


class Timeline(Watch):
    def __init__(self) -> None:
        super().__init__()
        self.began: list[float] = []

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Began):
            self.began.append(evt.payload.t)
        super().handle_event(ctx, evt)


def respawn_split() -> tuple[list[float], list[float], list[float]]:
    """Per kill: kill → exited dispatched, → attach() in the new worker, → started dispatched."""
    watch = Timeline()
    rt = Runtime(name="bench-costs-respawn")
    rt.register_process(watch)
    rt.register_service(Victim())
    detect: list[float] = []
    spawn: list[float] = []
    ready: list[float] = []
    with rt:
        for inc in range(1, KILLS + 1):
            pid, _ = watch.wait_started(inc)
            time.sleep(0.02)  # let its Began arrive first
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            _, again = watch.wait_started(inc + 1)
            exited = watch.exited[inc]
            attached = watch.began[-1]
            detect.append(exited - t0)
            spawn.append(attached - exited)
            ready.append(again - attached)
    return detect, spawn, ready


def main() -> None:
    ours, base = call_costs()

    def us(x: float) -> str:
        return f"{x * 1e6:.1f} µs"

    def med(costs: list[CallCost], field: str) -> float:
        return median([getattr(c, field) for c in costs])

    base_name = "raw DEALER/ROUTER + msgspec"
    rows = [
        ("parent CPU per call (all threads)", us(med(ours, "parent_cpu")), base_name, us(med(base, "parent_cpu")), f"{med(ours, 'parent_cpu') / med(base, 'parent_cpu'):.2f}"),
        ("device process CPU per call", us(med(ours, "child_cpu")), base_name, us(med(base, "child_cpu")), f"{med(ours, 'child_cpu') / max(med(base, 'child_cpu'), 1e-9):.2f}"),
        ("context switches per call", f"{med(ours, 'switches'):.1f}", base_name, f"{med(base, 'switches'):.1f}", f"{med(ours, 'switches') / med(base, 'switches'):.2f}"),
        ("wall time per call", us(med(ours, "wall")), base_name, us(med(base, "wall")), f"{med(ours, 'wall') / med(base, 'wall'):.2f}"),
    ]  # fmt: skip
    table(f"device call costs: {CALLS:,} calls x {ROUNDS} alternating rounds, medians (child CPU in 10 ms ticks)", rows)
    detect, spawn, ready = respawn_split()

    def ms(x: float) -> str:
        return f"{x * 1e3:.2f} ms"

    rows = [
        ("kill → worker.exited dispatched", ms(median(detect)), "", "", ""),
        ("→ attach() in the new worker", ms(median(spawn)), "", "", ""),
        ("→ worker.started dispatched", ms(median(ready)), "", "", ""),
    ]
    table(f"respawn split: {KILLS} SIGKILLs, p50 of each step", rows)


if __name__ == "__main__":
    main()

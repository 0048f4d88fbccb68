"""The parent's watchdog: hangs judged from shared memory, memory and CPU sampled with psutil.

Pure judgement: these functions say what is wrong with an incarnation; the
supervisor decides what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from ..kernel import Device, Service
from ..kernel._boundary import SlotTable
from ._workers import Incarnation, Usage

#: How often the hub looks at its live workers (seconds).
WATCH_PERIOD = 0.1
#: How often each live worker's memory and CPU are sampled (seconds).
SAMPLE_PERIOD = 0.5


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why an incarnation must be killed."""

    cause: str  # "hung", "rss_limit" or "cpu_limit"
    reason: str
    limit: str = ""
    value: float = 0.0
    maximum: float = 0.0


def hang(comp: Service | Device, inc: Incarnation, slots: SlotTable, now: float) -> Verdict | None:
    """A tick past its deadline, an event taking too long, or heartbeats that stopped."""
    activity, since, limit = slots.activity(inc.slot)
    # Starting and stopping have their own timers (start_timeout, the stop escalation).
    if activity in ("tick", "handle_event"):
        if activity == "handle_event":
            since = max(since, slots.progress(inc.slot))
        if now - since > limit:
            return Verdict("hung", f"hung: {activity} ran longer than {limit:g}s")
    if comp.heartbeat_interval > 0:
        last = slots.heartbeat(inc.slot)
        if last and now - last > comp.heartbeat_timeout:
            return Verdict(
                "hung", f"hung: no heartbeat for {now - last:.1f}s (heartbeat_timeout {comp.heartbeat_timeout:g}s)"
            )
    return None


def sample(usage: Usage, pid: int, now: float, window: float) -> None:
    """Record the memory and CPU of process ``pid``; keep ``window`` seconds of CPU samples."""
    try:
        if usage.proc is None or usage.proc.pid != pid:
            usage.proc = psutil.Process(pid)
        with usage.proc.oneshot():
            usage.rss = usage.proc.memory_info().rss
            times = usage.proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return
    usage.sampled_at = now
    samples = usage.samples
    samples.append((now, times.user + times.system))
    while len(samples) > 2 and now - samples[1][0] >= window:
        samples.popleft()
    t0, c0 = samples[0]
    usage.cpu = (samples[-1][1] - c0) / (now - t0) * 100.0 if now > t0 else None


def over_limit(comp: Service | Device, usage: Usage, now: float) -> Verdict | None:
    """A breach of ``max_rss`` or of ``max_cpu`` (over a full ``cpu_window``)."""
    if comp.max_rss is not None and usage.rss is not None and usage.rss > comp.max_rss:
        return Verdict(
            "rss_limit",
            f"rss_limit: {usage.rss / 2**20:.1f} MiB over max_rss {comp.max_rss / 2**20:.1f} MiB",
            "rss",
            float(usage.rss),
            float(comp.max_rss),
        )
    full = bool(usage.samples) and now - usage.samples[0][0] >= comp.cpu_window * 0.9
    if comp.max_cpu is not None and usage.cpu is not None and full and usage.cpu > comp.max_cpu:
        return Verdict(
            "cpu_limit",
            f"cpu_limit: {usage.cpu:.0f}% over max_cpu {comp.max_cpu:g}% for {comp.cpu_window:g}s",
            "cpu",
            usage.cpu,
            float(comp.max_cpu),
        )
    return None

"""The parent's watchdog: hangs judged from shared memory, memory and CPU sampled with psutil (hub thread).

The functions judge: they say what is wrong with an incarnation. :class:`Watchdog` runs them
periodically and reports each incarnation that must die to the exits (``_exits``), which kill it
and, once it is gone, decide what follows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import psutil

from ..kernel import Device, Service
from ..kernel._boundary import SlotTable
from ._books import Books
from ._timers import Periodic
from ._workers import Incarnation, Usage, Worker

#: How often the hub looks at its live workers (seconds).
WATCH_PERIOD = 0.1
#: How often each live worker's memory and CPU are sampled (seconds).
SAMPLE_PERIOD = 0.5


#: The exit causes the supervisor itself brings about by killing an incarnation.
KillCause: TypeAlias = Literal["hung", "rss_limit", "cpu_limit", "start_timeout", "unhealthy"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why an incarnation must be killed."""

    cause: KillCause
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


class Watchdog:
    """Looks at every live worker each ``WATCH_PERIOD`` while there is one."""

    def __init__(self, books: Books, kill: Callable[[Worker, Incarnation, Verdict], None]) -> None:
        self.books = books
        #: Where a verdict is reported (the exits).
        self._kill = kill
        self._watching: Periodic | None = None

    def soon(self) -> None:
        """Make sure the watch runs (a spawn calls this: the watch stops once no worker is live)."""
        if self._watching is None or self._watching.done:
            self._watching = self.books._hub().every(WATCH_PERIOD, self._watch, "watchdog")

    def _watch(self) -> bool:
        """Look at every live worker once; False once there is none (a spawn starts it again)."""
        b = self.books
        now = time.monotonic()
        live = False
        failed: Exception | None = None
        for worker, inc in list(b._by_identity.values()):
            if inc.exited or inc.pid is None:
                continue
            live = True
            if inc.cause is not None or not inc.ready or inc.stop_sent:
                continue
            comp = worker.component
            verdict = hang(comp, inc, b.slots, now)
            if verdict is None and now - inc.usage.sampled_at >= SAMPLE_PERIOD:
                try:
                    sample(inc.usage, inc.pid, now, comp.cpu_window)
                except Exception as exc:  # e.g. EMFILE at the fd limit: hangs of the others are still judged
                    failed = failed or exc
                else:
                    verdict = over_limit(comp, inc.usage, now)
            if verdict is not None:
                self._kill(worker, inc, verdict)
        if failed is not None:
            raise failed  # reported once by the hub; the watch goes on next period
        return live or bool(b._by_identity)

"""The parent's watchdog: hangs judged from shared memory, memory and CPU read from /proc (hub thread).

The functions judge: they say what is wrong with an incarnation. :class:`Watchdog` runs them
periodically and reports each incarnation that must die to the exits (``_exits``), which kill it
and, once it is gone, decide what follows.

Idle cost stays near O(1) per period however many workers there are: each incarnation is looked
at only when something about it is due, taken from a heap of due times (not found by walking every
worker). A hang is judged at its known deadline (the start of the running activity plus its limit,
the last heartbeat plus ``heartbeat_timeout``) and, for an activity that may begin meanwhile, at
least every tenth of the worker's smallest limit. A worker with ``max_rss`` or ``max_cpu`` is
sampled every ``SAMPLE_PERIOD`` (its limits are enforced as before); the others, whose figures only
feed the status and metrics, share a budget of ``SAMPLE_RATE`` samples a second. A sample is one
read of ``/proc/PID/stat``.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ..kernel import Device, Service
from ..kernel._boundary import SlotTable
from ..kernel._components import tick_deadline
from ._books import Books
from ._timers import Periodic
from ._workers import Incarnation, Usage, Worker

#: How often the hub looks at its live workers (seconds).
WATCH_PERIOD = 0.1
#: How often the memory and CPU of a worker with a resource limit are sampled (seconds).
SAMPLE_PERIOD = 0.5
#: Samples a second shared by the workers without a limit (each at most every ``SAMPLE_PERIOD``).
SAMPLE_RATE = 32.0
#: A hang check of a worker is at most this fraction of its smallest activity limit late (and at most
#: ``WATCH_PERIOD`` late for an activity already running or heartbeats that stopped: those deadlines are known).
CHECK_FRACTION = 0.1

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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


def judge(comp: Service | Device, inc: Incarnation, slots: SlotTable, now: float) -> tuple[Verdict | None, float]:
    """Whether ``inc`` hangs (a tick past its deadline, an event taking too long, heartbeats that
    stopped), and when it next may: a known deadline, or a tenth of its smallest limit from now."""
    due = now + max(WATCH_PERIOD, smallest_limit(comp) * CHECK_FRACTION)
    activity, since, limit = slots.activity(inc.slot)
    # Starting and stopping have their own timers (start_timeout, the stop escalation).
    if activity in ("tick", "handle_event"):
        if activity == "handle_event":
            since = max(since, slots.progress(inc.slot))
        if now - since > limit:
            return Verdict("hung", f"hung: {activity} ran longer than {limit:g}s"), due
        due = min(due, since + limit)
    if comp.heartbeat_interval > 0:
        # Known from the start: a worker beats once before it says Ready, and a beat only moves it later.
        last = slots.heartbeat(inc.slot)
        if last:
            if now - last > comp.heartbeat_timeout:
                return Verdict(
                    "hung", f"hung: no heartbeat for {now - last:.1f}s (heartbeat_timeout {comp.heartbeat_timeout:g}s)"
                ), due
            due = min(due, last + comp.heartbeat_timeout)
    return None, due


def smallest_limit(comp: Service | Device) -> float:
    """The smallest time limit a new activity of ``comp`` may run under (a heartbeat's deadline is always known)."""
    if isinstance(comp, Service):
        return min(comp.event_timeout, tick_deadline(comp))
    return comp.event_timeout


def read_stat(pid: int) -> tuple[int, float] | None:
    """(rss bytes, cpu seconds) of process ``pid`` from one read of /proc/PID/stat; None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError as exc:  # EMFILE: said once for all workers, so without the worker's path
        raise OSError(exc.errno, exc.strerror) from None
    try:
        data = os.read(fd, 4096)
    except (ProcessLookupError, OSError):
        return None
    finally:
        os.close(fd)
    # After the command name (which may hold spaces and parentheses): state is field 3.
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 22 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[21]) * _PAGE, (int(fields[11]) + int(fields[12])) / _TICK


def sample(usage: Usage, pid: int, now: float, window: float) -> None:
    """Record the memory and CPU of process ``pid``; keep ``window`` seconds of CPU samples."""
    got = read_stat(pid)
    if got is None:
        return
    usage.rss, cpu = got
    usage.sampled_at = now
    samples = usage.samples
    samples.append((now, cpu))
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
        # (when, n, worker, incarnation): when each watched incarnation is next due (a hang check or a
        # sample). Every ready incarnation that is not ending has one entry, pushed by ready() and
        # pushed again each time it is looked at; an entry whose incarnation has ended, is ending or
        # has left the books is dropped when it comes due. So a period costs what is due, not O(workers).
        self._due: list[tuple[float, int, Worker, Incarnation]] = []
        self._order = itertools.count()

    def soon(self) -> None:
        """Make sure the watch runs (a spawn calls this: the watch stops once no worker is live)."""
        if self._watching is None or self._watching.done:
            self._watching = self.books._hub().every(WATCH_PERIOD, self._watch, "watchdog")

    def ready(self, worker: Worker, inc: Incarnation) -> None:
        """``inc`` is ready: watch it from the next period on (hub thread)."""
        heapq.heappush(self._due, (0.0, next(self._order), worker, inc))
        self.soon()

    def _watch(self) -> bool:
        """Look at every watched incarnation something is due for; False once no worker is left."""
        b = self.books
        now = time.monotonic()
        due = self._due
        failed: Exception | None = None
        # The workers without a limit share SAMPLE_RATE samples a second between them.
        spread = max(SAMPLE_PERIOD, len(b._by_identity) / SAMPLE_RATE)
        while due and due[0][0] <= now:
            _, _, worker, inc = heapq.heappop(due)
            if inc.exited or inc.pid is None or inc.cause is not None or inc.stop_sent:
                continue  # it is ending: its exit, not the watch, says what follows
            if b._by_identity.get(inc.identity, (None, None))[1] is not inc:
                continue
            usage = inc.usage
            comp = worker.component
            limited = comp.max_rss is not None or comp.max_cpu is not None
            every = SAMPLE_PERIOD if limited else spread
            verdict = None
            if now >= inc.watch_at:
                verdict, inc.watch_at = judge(comp, inc, b.slots, now)
            if verdict is None and now - usage.sampled_at >= every:
                try:
                    sample(usage, inc.pid, now, comp.cpu_window)
                except Exception as exc:  # e.g. EMFILE at the fd limit: hangs of the others are still judged
                    failed = failed or exc  # tried again next period: the fault stands until a sample works
                else:
                    verdict = over_limit(comp, usage, now) if limited else None
            if verdict is not None:
                self._kill(worker, inc, verdict)
                continue
            # Past due (a sample that failed or found no process) means the next period, not this loop again.
            when = max(min(inc.watch_at, usage.sampled_at + every), now + 1e-6)
            heapq.heappush(due, (when, next(self._order), worker, inc))
        if failed is not None:
            raise failed  # reported once by the hub; the watch goes on next period
        if not b._by_identity:
            due.clear()  # nobody left: the watch ends (and what it held goes)
            return False
        return True

"""Worker records: the public status type and the hub thread's private bookkeeping."""

from __future__ import annotations

import datetime as _dt
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..kernel import Device, Service
from ..kernel import protocol as p
from ..kernel._components import handles_events
from ..kernel._vocab import ExitCause, Role
from ._states import Intent, WorkerState, transition
from ._timers import Timer

__all__ = ["Incarnation", "Usage", "Worker", "WorkerState", "WorkerStatus"]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A snapshot of one worker, as returned by ``Runtime.workers()``."""

    name: str
    role: Role
    pid: int | None
    state: WorkerState
    #: Respawns since boot, and those within the current ``restart_window``.
    restarts: int
    started_at: _dt.datetime | None
    incarnation: int
    last_exit: str | None
    restarts_in_window: int = 0
    #: Seconds the current incarnation has been running (None unless running).
    uptime: float | None = None
    #: Resident memory in bytes and CPU use in percent of one core, as last sampled.
    rss: int | None = None
    cpu_percent: float | None = None
    group: str | None = None


class Incarnation:
    """One process of a worker: what it sent, what it said, how it ended."""

    def __init__(self, number: int, identity: bytes, slot: int) -> None:
        self.number = number
        self.identity = identity
        self.slot = slot
        #: The secret its Hello must carry: until then nothing it sends is believed.
        self.token = b""
        #: Frames refused from its identity before a verified Hello, and Hellos with a wrong token.
        self.unverified = 0
        self.wrong_tokens = 0
        #: The supervisor's count of refused frames when this incarnation began (for diagnosis).
        self.refused_at = 0
        #: Connections with its routing id refused at the handshake (a wrong token), and the
        #: supervisor's count of refused connections when it began.
        self.denied = 0
        self.denied_at = 0
        self.pid: int | None = None
        self.received = 0  # items that arrived
        self.next_seq = 1  # the item number expected next (items before it arrived or were skipped)
        self.controls = 0
        self.hello = False
        self.ready = False
        #: Forked ahead of its turn at boot: set up, it waits for Go before running its component.
        #: Until Go its start time does not run, and an end is said only at its turn (see ``_spawning``).
        self.gated = False
        #: Boot has come to its turn: Go goes out as soon as its Hello is in.
        self.go_wanted = False
        #: Stopped before its Go: nothing of it ran, so nothing is said of its end.
        self.quiet = False
        #: A device's own call endpoint (from its Ready), which the parent's threads call directly.
        self.direct = ""
        self.draining = False
        self.start_failed: p.StartFailed | None = None
        #: Why the supervisor killed it ("hung", "rss_limit", ...), and the details.
        self.cause: ExitCause | None = None
        self.detail = ""
        self.ready_at: float | None = None
        self.stop_sent = False
        self.usage = Usage()
        #: When the watchdog next judges whether it hangs (monotonic; 0: at its first look).
        self.watch_at = 0.0
        self.spawn_error: str | None = None
        #: Set when the environment refused the spawn (a limit, which may lift): it is retried.
        self.spawn_errno: int | None = None
        #: Its memory cgroup's OOM kill counter and the count when it started (None where unknown).
        self.oom: tuple[Path, int] | None = None
        #: It died of SIGKILL while that count rose: the OOM killer's doing.
        self.oom_killed = False
        self.bye: p.Bye | None = None
        self.exit_code: int | None = None
        self.exited = False
        self.finalized = False
        #: A standalone process that joined, rather than one the fork server made.
        self.external = False
        self.timers: list[Timer] = []
        #: Set once the incarnation is ready or has ended.
        self.outcome = threading.Event()
        #: The dispatch ticket of what was said about that outcome (see ``Dispatcher.wait_for``).
        self.ticket = 0

    def blame(self, cause: ExitCause, detail: str) -> bool:
        """Record why the supervisor ends it; the first cause stands (False if one was recorded already)."""
        if self.cause is not None:
            return False
        self.cause, self.detail = cause, detail
        return True

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class Usage:
    """Resource samples of one incarnation (taken by the supervisor's watchdog)."""

    __slots__ = ("cpu", "rss", "sampled_at", "samples")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()  # (monotonic, cpu seconds)
        self.sampled_at = 0.0
        self.rss: int | None = None
        self.cpu: float | None = None


class Worker:
    """A supervised Service or Device and its successive incarnations."""

    def __init__(
        self, component: Service | Device, *, forked: bool, on_move: Callable[[], None] = lambda: None
    ) -> None:
        self.component = component
        self.name = component.name
        self.role: Role = "service" if isinstance(component, Service) else "device"
        self.kind = component.kind if isinstance(component, Device) else ""
        self.wants_events = isinstance(component, Service) and handles_events(component)
        #: Whether the fork server has this component in memory (registered before boot).
        self.forked = forked
        #: The component, pickled, for a fork server that never saw it.
        self.pickled: bytes | None = None
        #: The command that runs it in a fresh interpreter, for a worker added from the command line.
        self.argv: list[str] | None = None
        self._state = WorkerState.STOPPED
        self._on_move = on_move
        #: What the supervisor wants of it (see ``_states.Intent``).
        self.intent: Intent = "run"
        self.current: Incarnation | None = None
        #: Its hot spare (``spare = True``): the next incarnation, forked ahead and waiting at its gate.
        self.spare: Incarnation | None = None
        #: Spares it may still fork for its current incarnation (see ``_spares``).
        self.spares_left = 0
        self.incarnations = 0
        self.restarts = 0
        self.restart_times: deque[float] = deque()
        #: Failures in a row without a healthy run in between (drives the backoff).
        self.streak = 0
        self.group: str | None = None
        self.started_at: _dt.datetime | None = None
        self.last_exit: str | None = None
        self.backoff_timer: Timer | None = None
        #: When the death of an incarnation it is to come back from was seen (monotonic), until it is ready.
        self.died_at: float | None = None
        #: Set when the worker reaches ``stopped`` or ``failed``.
        self.done = threading.Event()
        self.done.set()

    @property
    def state(self) -> WorkerState:
        """Where it is in its life; changed only by :meth:`move`."""
        return self._state

    def move(self, state: WorkerState) -> None:
        """Go to ``state``, if the lifecycle allows it from where it is (else a bug: ``IllegalTransition``)."""
        self._state = transition(self._state, state)
        self._on_move()

    @property
    def held(self) -> bool:
        """Stopped by its group's strategy: its exit is not a failure of its own."""
        return self.intent == "hold"

    @property
    def stop_requested(self) -> bool:
        """Asked to stop: its exit is no failure and it stays down."""
        return self.intent == "stop"

    def status(self, now: float, window: int) -> WorkerStatus:
        inc = self.current
        running = inc is not None and inc.ready_at is not None and not inc.exited
        usage = inc.usage if inc is not None and not inc.exited else None
        return WorkerStatus(
            name=self.name,
            role=self.role,
            pid=inc.pid if inc is not None and not inc.exited else None,
            state=self.state,
            restarts=self.restarts,
            started_at=self.started_at,
            incarnation=self.incarnations,
            last_exit=self.last_exit,
            restarts_in_window=window,
            uptime=now - inc.ready_at if running and inc is not None and inc.ready_at is not None else None,
            rss=usage.rss if usage is not None else None,
            cpu_percent=usage.cpu if usage is not None else None,
            group=self.group,
        )

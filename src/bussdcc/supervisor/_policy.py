"""Restart policy as data and the restart decision as a pure function (no thread, no clock, no I/O).

In the spirit of OTP's ``supervisor:do_restart/3``: given a worker's policy, how its incarnation
ended, its restart history and the time, :func:`decide` says ``Respawn(delay)``, ``Stop`` or
``GiveUp(reason)``. The supervisor classifies the exit (:func:`exit_kind`), asks, and applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, assert_never, get_args

from ..kernel import RestartPolicy
from ..kernel._components import Supervised, restart_policy
from ..kernel._vocab import ExitCause
from ._backoff import backoff_delay

__all__ = [
    "ACTIONS",
    "Action",
    "ExitKind",
    "GiveUp",
    "History",
    "Policy",
    "Respawn",
    "Stop",
    "Verdict",
    "decide",
    "exit_kind",
    "intensity",
]

#: How an incarnation ended, as far as the restart decision cares:
#: ``requested``: the supervisor asked it to stop (or its group held it): never a failure;
#: ``normal``: it ended of its own accord, cleanly;
#: ``abnormal``: it crashed, was killed (hung, over a limit, too slow to start) or its start raised;
#: ``gave_up``: it said goodbye with an error (it gave up itself);
#: ``unloadable``: no process could be made of it, and no retry will change that;
#: ``refused``: the environment refused the process (a limit, which may lift);
#: ``unhealthy``: it was killed for a broken expectation or a failing ``health()``.
ExitKind: TypeAlias = Literal["requested", "normal", "abnormal", "gave_up", "unloadable", "refused", "unhealthy"]
Action: TypeAlias = Literal["respawn", "stop", "give_up"]

_P = RestartPolicy
_K = ExitKind

#: The decision table: one row per restart type, one column per exit kind.
ACTIONS: Final[dict[tuple[RestartPolicy, ExitKind], Action]] = {
    # permanent: always back, whatever the end, unless it gave up itself or cannot be loaded.
    ("permanent", "requested"): "stop",
    ("permanent", "normal"): "respawn",
    ("permanent", "abnormal"): "respawn",
    ("permanent", "refused"): "respawn",
    ("permanent", "gave_up"): "give_up",
    ("permanent", "unloadable"): "give_up",
    ("permanent", "unhealthy"): "respawn",
    # transient: back only after an abnormal (or unhealthy) end.
    ("transient", "requested"): "stop",
    ("transient", "normal"): "stop",
    ("transient", "abnormal"): "respawn",
    ("transient", "refused"): "respawn",
    ("transient", "gave_up"): "give_up",
    ("transient", "unloadable"): "give_up",
    ("transient", "unhealthy"): "respawn",
    # temporary: never back; an abnormal or unhealthy end is a failure.
    ("temporary", "requested"): "stop",
    ("temporary", "normal"): "stop",
    ("temporary", "abnormal"): "give_up",
    ("temporary", "refused"): "give_up",
    ("temporary", "gave_up"): "give_up",
    ("temporary", "unloadable"): "give_up",
    ("temporary", "unhealthy"): "give_up",
}
if set(ACTIONS) != {(p, k) for p in get_args(_P) for k in get_args(_K)}:  # pragma: no cover
    raise AssertionError("the decision table must name every restart type and exit kind")


@dataclass(frozen=True, slots=True)
class Policy:
    """A worker's restart settings (OTP's restart type and intensity, plus a capped backoff)."""

    restart: RestartPolicy = "permanent"
    max_restarts: int = 5
    restart_window: float = 60.0
    backoff_initial: float = 0.05
    backoff_max: float = 2.0

    @classmethod
    def of(cls, component: Supervised) -> Policy:
        """The policy a Service's or Device's settings describe."""
        return cls(
            restart_policy(component),
            component.max_restarts,
            component.restart_window,
            component.backoff_initial,
            component.backoff_max,
        )


@dataclass(frozen=True, slots=True)
class History:
    """A worker's restarts so far: their times, and its failures in a row without a healthy run."""

    times: tuple[float, ...] = ()
    streak: int = 0


@dataclass(frozen=True, slots=True)
class Respawn:
    """Start the next incarnation after ``delay`` seconds; ``history`` is the worker's, updated."""

    delay: float
    history: History


@dataclass(frozen=True, slots=True)
class Stop:
    """Leave it stopped: no failure."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop respawning it: it failed for good."""

    reason: str


Verdict: TypeAlias = Respawn | Stop | GiveUp


def exit_kind(cause: ExitCause, *, requested: bool = False, environmental: bool = False) -> ExitKind:
    """Classify an exit: ``requested`` if the supervisor asked for it; ``environmental`` for a refused spawn."""
    if requested:
        return "requested"
    match cause:
        case "exited" | "stopped":
            return "normal"
        case "error":
            return "gave_up"
        case "spawn_failed":
            return "refused" if environmental else "unloadable"
        case "exit_code" | "signal" | "hung" | "rss_limit" | "cpu_limit" | "start_timeout" | "start_failed":
            return "abnormal"
        case "unhealthy":
            return "unhealthy"
        case _:
            assert_never(cause)


def intensity(times: tuple[float, ...], now: float, max_restarts: int, window: float) -> tuple[bool, tuple[float, ...]]:
    """(whether one more restart stays within ``max_restarts`` per ``window`` seconds, the times still in it)."""
    kept = tuple(t for t in times if now - t <= window)
    return len(kept) < max_restarts, kept


def decide(
    policy: Policy,
    kind: ExitKind,
    history: History,
    now: float,
    *,
    error: str = "",
    closing: bool = False,
    jitter: float = 1.0,
) -> Verdict:
    """What follows an exit of ``kind`` (``error`` says why, for a give-up); ``closing``: shutdown has begun."""
    action = ACTIONS[policy.restart, kind]
    match action:
        case "stop":
            return Stop()
        case "give_up":
            return GiveUp(error)
        case "respawn":
            if closing:  # nothing comes back once shutdown has begun
                return Stop()
            allowed, kept = intensity(history.times, now, policy.max_restarts, policy.restart_window)
            if not allowed:
                return GiveUp(f"{policy.max_restarts} restarts within {policy.restart_window:g}s; last: {error}")
            delay = backoff_delay(history.streak, policy.backoff_initial, policy.backoff_max, jitter)
            return Respawn(delay, History((*kept, now), history.streak + 1))
        case _:
            assert_never(action)

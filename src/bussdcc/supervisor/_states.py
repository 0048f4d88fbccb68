"""The worker lifecycle as one state machine: its states, the moves allowed between them (pure).

Every change of a worker's state goes through :func:`transition`; a move that is not in
:data:`TRANSITIONS` is a bug of the supervisor and raises :class:`IllegalTransition`.
What the supervisor *wants* of a worker is one field beside the state, :data:`Intent`.

In short: ``stopped``/``failed`` → ``starting`` → ``running`` → ``stopping``; an exit leads
to ``stopped`` (asked, or not to be respawned), ``backoff`` (respawned later, or held for its
group's restart) or ``failed`` (given up); ``backoff`` → ``starting`` when it comes back.
A running worker found unhealthy (a broken expectation, a failing ``health()``) is
``unhealthy`` until it recovers (→ ``running``), or until it is stopped or ends like a running one.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, TypeAlias

__all__ = ["TRANSITIONS", "IllegalTransition", "Intent", "WorkerState", "transition"]


class WorkerState(enum.StrEnum):
    """Where a worker is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    FAILED = "failed"


#: What the supervisor wants of a worker: ``run`` (respawn it per its policy), ``stop`` (it was
#: asked to stop: its exit is no failure and it stays down) or ``hold`` (its group stopped it for a
#: group restart: its exit is no failure and the group's plan brings it back).
Intent: TypeAlias = Literal["run", "stop", "hold"]

_S = WorkerState

#: The moves allowed, from each state.
TRANSITIONS: Final[dict[WorkerState, frozenset[WorkerState]]] = {
    # Started (or joined) for the first time or again; failed by its group before it ever ran.
    _S.STOPPED: frozenset({_S.STARTING, _S.FAILED}),
    # Ready; asked to stop; ended before ready (stop, respawn later, give up).
    _S.STARTING: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.BACKOFF, _S.FAILED}),
    # Asked to stop; ended on its own (stop, respawn later, give up); found unhealthy.
    _S.RUNNING: frozenset({_S.STOPPING, _S.STOPPED, _S.BACKOFF, _S.FAILED, _S.UNHEALTHY}),
    # Recovered; or, like a running worker: asked to stop, ended (killed for it, or on its own).
    _S.UNHEALTHY: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.BACKOFF, _S.FAILED}),
    # Asked again (a stop after its group's hold); ended: stopped, held for its group, or failed.
    _S.STOPPING: frozenset({_S.STOPPING, _S.STOPPED, _S.BACKOFF, _S.FAILED}),
    # Its next incarnation starts; a stop or shutdown came first; it could not be respawned.
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPED, _S.FAILED}),
    # Started again by hand; failed again by its group (it stays failed).
    _S.FAILED: frozenset({_S.STARTING, _S.FAILED}),
}


class IllegalTransition(AssertionError):
    """A move the lifecycle does not allow: a bug of the supervisor, never a worker's doing."""


def transition(current: WorkerState, new: WorkerState) -> WorkerState:
    """``new`` if the lifecycle allows moving there from ``current``; otherwise raise ``IllegalTransition``."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"a worker cannot go from {current} to {new}")
    return new

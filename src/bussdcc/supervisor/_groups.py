"""Supervision groups: OTP's one_for_one, one_for_all and rest_for_one strategies.

Which members restart is a pure function of the strategy (:func:`affected`). A group restart
is a small plan carried out on the hub thread: stop the
affected members one at a time in reverse order, wait the failed member's
backoff, then start them in order, each ready before the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, assert_never

from ..kernel import Strategy
from ._timers import Timer
from ._workers import Worker, WorkerState


def affected(strategy: Strategy, members: list[str], failed: str) -> list[str]:
    """Who restarts with ``failed`` (itself included), in start order: the strategy's decision (pure)."""
    match strategy:
        case "one_for_all":
            return list(members)
        case "rest_for_one":
            return members[members.index(failed) :]
        case "one_for_one":
            return [failed]
        case _:
            assert_never(strategy)


class Group:
    """Members (in start order) and the strategy that ties them."""

    def __init__(self, name: str, strategy: Strategy, members: list[str]) -> None:
        self.name = name
        self.strategy = strategy
        self.members = members
        self.plan: Plan | None = None

    def affected(self, failed: str) -> list[str]:
        """Who restarts with ``failed`` (itself included), in start order."""
        return affected(self.strategy, self.members, failed)


class Driver(Protocol):
    """What a plan needs from the supervisor (hub thread)."""

    workers: dict[str, Worker]

    def hold(self, worker: Worker) -> None: ...
    def respawn(self, worker: Worker) -> None: ...
    def fail_held(self, worker: Worker, reason: str) -> None: ...
    def later(self, delay: float, fn: Callable[[], None]) -> Timer: ...


class Plan:
    """One group restart (or, if ``give_up``, one group stop after a member gave up)."""

    def __init__(self, driver: Driver, group: Group, failed: str, delay: float, *, give_up: str | None = None) -> None:
        self.driver = driver
        self.group = group
        self.failed = failed
        self.delay = delay
        self.give_up = give_up
        names = group.affected(failed)
        self.to_stop = [n for n in reversed(names) if n != failed]
        # Only what was up (or on its way back) comes back: not a disabled, stopped or failed member.
        up = (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.UNHEALTHY, WorkerState.BACKOFF)
        self.to_start = [] if give_up else [n for n in names if n == failed or driver.workers[n].state in up]
        self.timer: Timer | None = None
        self.waiting = False
        self.cancelled = False

    def cancel(self) -> None:
        """Stop carrying the plan out (a shutdown or an explicit stop came first)."""
        self.cancelled = True
        if self.timer is not None:
            self.timer.cancel()
        if self.group.plan is self:
            self.group.plan = None

    def drop(self, name: str) -> None:
        """Leave ``name`` out of the plan (it was stopped explicitly) and go on with the rest."""
        self.to_stop = [n for n in self.to_stop if n != name]
        self.to_start = [n for n in self.to_start if n != name]
        self.advance()

    def advance(self) -> None:
        """Take every step that can be taken now; called whenever a member changes state."""
        if self.cancelled or self.waiting:
            return
        workers = self.driver.workers
        while self.to_stop:
            worker = workers[self.to_stop[0]]
            if worker.current is not None:
                if not worker.held:
                    self.driver.hold(worker)
                return  # its exit calls advance() again
            self.to_stop.pop(0)
            if self.give_up:
                self.driver.fail_held(worker, self.give_up)
        if self.give_up:
            self.cancel()
            return
        if self.delay > 0:
            self.waiting = True
            delay, self.delay = self.delay, 0.0
            self.timer = self.driver.later(delay, self._waited)
            return
        while self.to_start:
            worker = workers[self.to_start[0]]
            if (
                worker.state in (WorkerState.RUNNING, WorkerState.UNHEALTHY, WorkerState.FAILED)
                or worker.stop_requested
            ):
                self.to_start.pop(0)
                continue
            if worker.current is None:
                self.driver.respawn(worker)
                if worker.current is None:  # it could not be started (and was given up on)
                    continue
            return  # its readiness (or its death) moves the plan on
        self.cancel()

    def _waited(self) -> None:
        self.waiting = False
        self.timer = None
        self.advance()

"""Review: a ``health()`` whose failure cannot even be described still leaves the checks running."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bussdcc import Context, Message, Service, WorkerState
from bussdcc.kernel._components import OnUnhealthy

from ._helpers import MakeRuntime, first_incarnation


class Unprintable:
    """A value (or exception) whose ``repr`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class UnprintableError(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class Odd(Service):
    """Its first ``health()`` answer is odd in the way ``how`` says; every later one is True."""

    interval = 0.05
    health_interval = 0.05
    health_timeout = 2.0
    on_unhealthy: OnUnhealthy = "report"

    def __init__(self, name: str, marker: str, how: str) -> None:
        self.name = name
        self.marker = marker
        self.how = how

    def health(self) -> bool | str:
        if first_incarnation(self.marker):
            if self.how == "raise":
                raise UnprintableError()
            return Unprintable()  # type: ignore[return-value]
        return True


def _recovers(make_runtime: MakeRuntime, tmp_path: Path, how: str) -> None:
    rt, rec = make_runtime(f"review-health-{how}", Odd("odd", str(tmp_path / "marker"), how))
    (bad,) = rec.wait_for("worker.unhealthy", timeout=30)
    assert bad.payload.what == "health"  # type: ignore[attr-defined]
    assert "gave no answer" not in bad.payload.reason  # type: ignore[attr-defined]
    # The check goes on: the next answer (True) makes it healthy again.
    rec.wait_for("worker.healthy", timeout=30)
    assert rt.worker("odd").state is WorkerState.RUNNING
    assert rt.worker("odd").incarnation == 1


def test_a_health_result_whose_repr_raises_fails_the_check_and_the_checks_go_on(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    _recovers(make_runtime, tmp_path, "value")


def test_a_health_exception_whose_repr_raises_fails_the_check_and_the_checks_go_on(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    _recovers(make_runtime, tmp_path, "raise")


@dataclass(slots=True, frozen=True)
class Stopped(Message):
    """Emitted by a Service's stop(): its cleanup ran."""

    name = "test.review.stopped"
    pid: int


class Sick(Service):
    """Responsive, but its own check fails: restarted for being unhealthy, once (then it gives up)."""

    name = "sick"
    interval = 0.05
    health_interval = 0.1
    health_timeout = 2.0
    max_restarts = 0

    def tick(self, ctx: Context) -> None:
        pass

    def stop(self, ctx: Context) -> None:
        ctx.emit(Stopped(os.getpid()))  # a Device would close its port here

    def health(self) -> bool | str:
        return "the sensor bus is silent"


def test_a_responsive_worker_restarted_for_its_health_stops_gracefully(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("review-health-graceful", Sick())
    (exited,) = rec.wait_for("worker.exited", timeout=30)
    assert exited.payload.cause == "unhealthy"  # type: ignore[attr-defined]
    assert rec.of("test.review.stopped"), "stop() ran before the restart"
    assert exited.payload.lost == 0  # type: ignore[attr-defined]


class Promising(Service):
    """Promises a message it emits: the parent keeps a stamp for the pair while the worker exists."""

    interval = 3600.0
    expect = {"test.review.stopped": 3600.0}

    def __init__(self, name: str) -> None:
        self.name = name


def test_a_removed_worker_leaves_no_expectation_stamps_behind(make_runtime: MakeRuntime) -> None:
    # Workers added and removed under fresh names (jobs, say) must not grow the parent's books.
    rt, _ = make_runtime("review-health-forget")
    health = rt._parts.supervisor._health  # type: ignore[union-attr]
    for k in range(3):
        rt.add_worker(Promising(f"job-{k}"))
        assert (f"job-{k}", "test.review.stopped") in health.seen
        rt.remove_worker(f"job-{k}")
    assert not [key for key in health.seen if key[0].startswith("job-")], health.seen

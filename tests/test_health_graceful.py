"""A restart for health is graceful first: a Stop, then SIGTERM, then SIGKILL for a worker that does not end."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from bussdcc import Context, Device, Message, Service, WorkerState

from ._helpers import MakeRuntime, first_incarnation, wait_until


@dataclass(slots=True, frozen=True)
class CleanedUp(Message):
    """Emitted by a Service's stop(): its cleanup ran."""

    name = "test.health_graceful.cleaned_up"
    pid: int


@dataclass(slots=True, frozen=True)
class Reading(Message):
    """Emitted on every tick."""

    name = "test.health_graceful.reading"
    pid: int


class Flaky(Service):
    """Unhealthy in its first incarnation only; emits on every tick and says so when it stops."""

    interval = 0.02
    health_interval = 0.1
    health_timeout = 2.0
    backoff_initial = 0.05

    def __init__(self, name: str, marker: str) -> None:
        self.name = name
        self.marker = marker
        self.sick = False

    def tick(self, ctx: Context) -> None:
        ctx.emit(Reading(os.getpid()))  # traffic in flight when the Stop comes: none of it may be lost

    def stop(self, ctx: Context) -> None:
        ctx.emit(CleanedUp(os.getpid()))

    def health(self) -> bool | str:
        if self.sick or first_incarnation(self.marker):
            self.sick = True
            return "the sensor bus is silent"
        return True


class Stuck(Flaky):
    """Unhealthy in its first incarnation, whose stop() then never returns and which ignores SIGTERM."""

    stop_timeout = 0.5
    kill_timeout = 0.5

    def tick(self, ctx: Context) -> None:
        pass

    def stop(self, ctx: Context) -> None:
        if not self.sick:
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:  # stuck: only SIGKILL ends it
            time.sleep(0.1)


def test_an_unhealthy_restart_stops_gracefully_and_the_worker_comes_back(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    rt, rec = make_runtime("health-graceful-back", Flaky("flaky", str(tmp_path / "marker")))
    (exited,) = rec.wait_for("worker.exited", timeout=30)
    p = exited.payload
    assert (p.cause, p.abnormal, p.signal, p.lost) == ("unhealthy", True, None, 0)  # type: ignore[attr-defined]
    assert p.reason.startswith("unhealthy: health: the sensor bus is silent")  # type: ignore[attr-defined]
    assert [e for e in rec.of(CleanedUp.name) if e.payload.pid == p.pid], "stop() ran"  # type: ignore[attr-defined]
    # Its intent stayed "run": the policy respawned it (a failure, counted), and it is healthy now.
    rec.wait_for("worker.backoff", timeout=30)
    rec.wait_for("worker.started", lambda e: e.payload.incarnation == 2, timeout=30)  # type: ignore[attr-defined]
    assert rt.worker("flaky").restarts == 1


def test_a_worker_that_ignores_the_stop_is_escalated_and_killed_and_its_exit_says_unhealthy(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    rt, rec = make_runtime("health-graceful-stuck", Stuck("stuck", str(tmp_path / "marker")))
    (exited,) = rec.wait_for("worker.exited", timeout=30)
    p = exited.payload
    assert (p.cause, p.abnormal, p.signal) == ("unhealthy", True, "SIGKILL")  # type: ignore[attr-defined]
    assert p.reason.startswith("unhealthy: health: ")  # type: ignore[attr-defined]
    assert "killed by SIGKILL" in p.reason  # type: ignore[attr-defined]
    rec.wait_for("worker.started", lambda e: e.payload.incarnation == 2, timeout=30)  # type: ignore[attr-defined]
    assert rt.worker("stuck").restarts == 1


class SlowToClose(Device):
    """Unhealthy in its first incarnation, whose disconnect() then waits for the file ``<config>.release``."""

    health_interval = 0.1
    health_timeout = 2.0
    backoff_initial = 0.05
    stop_timeout = 60.0  # the test, not the escalation, lets it go

    def __init__(self, id: str, config: str) -> None:
        super().__init__(id=id, config=config)
        self.sick = False

    def pid(self) -> int:
        return os.getpid()

    def disconnect(self) -> None:
        deadline = time.monotonic() + 50
        while self.sick and not os.path.exists(f"{self.config}.release") and time.monotonic() < deadline:
            time.sleep(0.05)

    def health(self) -> bool | str:
        if self.sick or first_incarnation(str(self.config)):
            self.sick = True
            return "calibration drifted"
        return True


def test_a_call_that_waits_while_a_device_stops_for_its_health_is_answered_by_the_next_incarnation(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    base = str(tmp_path / "marker")
    rt, rec = make_runtime("health-graceful-call", SlowToClose("slow", base))
    first = rt.wait_for_worker("slow", WorkerState.STOPPING, timeout=30)
    answer: Future[int] = Future()

    def call() -> None:
        try:
            answer.set_result(rt.device(SlowToClose, "slow", timeout=60, wait=True).call(SlowToClose.pid))
        except BaseException as exc:
            answer.set_exception(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    # Stopping for its health, it is coming back: the call waits for it rather than failing.
    wait_until(lambda: rt.stats().calls_parked == 1, timeout=30, what="the call parked")
    Path(f"{base}.release").touch()
    pid = answer.result(timeout=60)
    caller.join(timeout=10)
    assert pid != first.pid
    (exited,) = rec.of("worker.exited")
    assert (exited.payload.cause, exited.payload.lost) == ("unhealthy", 0)  # type: ignore[attr-defined]

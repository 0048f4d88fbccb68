"""Calls and the device's life: crashes fail calls at once, unready devices refuse or are waited for."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from bussdcc import Runtime, WorkerState, message
from bussdcc.errors import DeviceCrashed, DeviceUnavailable

from ._devices import Motor, PooledMotor
from ._helpers import MakeRuntime, Recorder, first_incarnation, wait_until


class SlowRestart(Motor):
    """Connects slowly in every incarnation but the first, then backs off for a while after a crash."""

    marker = ""
    backoff_initial = 0.6
    max_restarts = 10

    def connect(self) -> None:
        super().connect()
        if not first_incarnation(self.marker):
            time.sleep(0.5)


class Fragile(Motor):
    """Never restarted."""

    restart = False


def test_a_device_that_segfaults_mid_call_raises_device_crashed_at_once(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("calls-segv", Motor(id="axis-1"))
    # An hour: DeviceCrashed must come from the crash, never from the deadline.
    motor = rt.device(Motor, "axis-1", timeout=3600.0)
    old_pid = motor.call(Motor.pid)
    with pytest.raises(DeviceCrashed) as info:
        motor.call(Motor.segfault)
    err = info.value
    assert err.reason == "killed by SIGSEGV" and "SIGSEGV" in str(err) and str(old_pid) in str(err)
    assert err.device == "axis-1" and err.method == "segfault"
    # Reported like any other crash, and respawned per policy.
    (exited,) = rec.wait_for("worker.exited", lambda e: e.payload.to_dict()["pid"] == old_pid)
    assert isinstance(exited.payload, message.WorkerExited) and exited.payload.signal == "SIGSEGV"
    (failed,) = rec.wait_for("device.failed")
    assert "SIGSEGV" in failed.payload.to_dict()["error"]
    new_pid = motor.options(wait=True).call(Motor.pid)
    assert new_pid not in (old_pid, os.getpid())


@pytest.mark.parametrize("cls", [Motor, PooledMotor], ids=["inline", "pooled"])
def test_every_call_in_flight_fails_when_the_device_dies(make_runtime: MakeRuntime, cls: type[Motor]) -> None:
    rt, _ = make_runtime(f"calls-inflight-{cls.__name__.lower()}", cls(id="axis-1"))
    motor = rt.device(cls, "axis-1", timeout=3600.0)  # the crash, not a deadline, must end them
    pid = motor.call(Motor.pid)
    errors: list[BaseException] = []

    def waiter(i: int) -> None:
        try:
            motor.call(Motor.nap, 3600.0, tag=str(i))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: rt.stats().calls_in_flight == 3, what="three calls in flight")
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert len(errors) == 3 and all(isinstance(e, DeviceCrashed) for e in errors), errors
    assert all(e.reason == "killed by SIGKILL" for e in errors if isinstance(e, DeviceCrashed))


def test_a_failed_device_is_unavailable_at_once(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("calls-failed", Fragile(id="axis-1"))
    motor = rt.device(Fragile, "axis-1", timeout=3600.0)  # refused at once, or the test times out
    with pytest.raises(DeviceCrashed):
        motor.call(Motor.segfault)
    wait_until(lambda: rt.workers()[0].state is WorkerState.FAILED, what="the device to fail")
    with pytest.raises(DeviceUnavailable) as info:
        motor.call(Motor.move, 1.0)
    assert info.value.state == "failed"
    with pytest.raises(DeviceUnavailable) as waited:
        motor.options(wait=True).call(Motor.move, 1.0)
    # Nothing to wait for: a failed device does not come back by itself.
    assert waited.value.state == "failed"


def test_a_stopped_device_is_unavailable_at_once(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("calls-stopped", Motor(id="axis-1"))
    rt.stop_worker("axis-1")
    with pytest.raises(DeviceUnavailable) as info:
        rt.device(Motor, "axis-1").call(Motor.move, 1.0)
    assert info.value.state == "stopped"


def test_starting_and_backoff_refuse_at_once_or_wait_for_the_next_incarnation(
    make_runtime: MakeRuntime, tmp_path: object
) -> None:
    dev = SlowRestart(id="axis-1")
    dev.marker = f"{tmp_path}/connected"
    rt, _ = make_runtime("calls-backoff", dev)
    motor = rt.device(SlowRestart, "axis-1", timeout=30.0)
    first = motor.call(Motor.pid)
    with pytest.raises(DeviceCrashed):
        motor.call(Motor.segfault)  # the first respawn is immediate, and connects slowly
    with pytest.raises(DeviceUnavailable) as info:
        motor.call(Motor.move, 1.0)
    assert info.value.state in ("starting", "backoff")
    second = motor.options(wait=True).call(Motor.pid)
    assert second != first
    with pytest.raises(DeviceCrashed):
        motor.call(Motor.segfault)  # the second respawn waits backoff_initial
    wait_until(lambda: rt.workers()[0].state is WorkerState.BACKOFF, what="backoff")
    with pytest.raises(DeviceUnavailable) as info:
        motor.call(Motor.move, 1.0)
    assert info.value.state == "backoff"
    assert motor.options(wait=True).call(Motor.move, 2.0, speed=2.0) == 4.0  # waited for the respawn
    assert motor.call(Motor.pid) not in (first, second)


@pytest.mark.parametrize("cls", [Motor, PooledMotor], ids=["inline", "pooled"])
def test_a_call_running_at_shutdown_still_gets_its_answer(cls: type[Motor]) -> None:
    rec = Recorder()
    rt = Runtime(name=f"calls-shutdown-{cls.__name__.lower()}")
    rt.register_process(rec)
    rt.attach_device(cls(id="axis-1"))
    rt.boot()
    motor = rt.device(cls, "axis-1", timeout=30.0)
    answers: list[object] = []
    caller = threading.Thread(target=lambda: answers.append(motor.call(Motor.nap, 0.5, tag="announce:done")))
    caller.start()
    rec.wait_for("test.answer")  # running in the device, not merely routed
    rt.shutdown()
    caller.join(10)
    assert answers == ["announce:done"]


class SlowReturn(Motor):
    """Comes back after its second crash only in an hour."""

    backoff_initial = backoff_max = 3600.0


def test_a_call_waiting_for_a_device_fails_when_the_runtime_shuts_down(tmp_path: object) -> None:
    rt = Runtime(name="calls-parked")
    rt.attach_device(SlowReturn(id="axis-1"))
    rt.boot()
    motor = rt.device(SlowReturn, "axis-1", timeout=3600.0, wait=True)
    for _ in range(2):  # the first respawn is immediate (the wait=True call waits for it), the second an hour
        with pytest.raises(DeviceCrashed):
            motor.call(Motor.segfault)
    # The caller hears of the crash before the hub has decided what follows it.
    wait_until(lambda: rt.workers()[0].state is WorkerState.BACKOFF, what="the long backoff")
    errors: list[BaseException] = []

    def parked() -> None:
        try:
            motor.call(Motor.move, 1.0)
        except Exception as exc:
            errors.append(exc)

    caller = threading.Thread(target=parked)
    caller.start()
    wait_until(lambda: rt.stats().calls_parked == 1, what="a parked call")
    rt.shutdown()  # waiting out the hour's backoff or the call's deadline would time the test out
    caller.join(30)
    assert len(errors) == 1 and isinstance(errors[0], DeviceUnavailable)


def test_stopping_a_pooled_device_finishes_running_calls_and_refuses_queued_ones(make_runtime: MakeRuntime) -> None:
    pooled = PooledMotor(id="axis-1")
    pooled.stop_timeout = 60.0  # its running calls end by themselves, however slow the machine
    rt, rec = make_runtime("calls-pool-stop", pooled)
    motor = rt.device(PooledMotor, "axis-1", timeout=30.0)
    outcomes: dict[int, object] = {}

    def caller(i: int) -> None:
        try:
            outcomes[i] = motor.call(Motor.nap, 5.0, tag=f"announce:{i}")
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: rt.stats().calls_in_flight == 6, what="six calls in flight")
    rec.wait_for("test.answer", count=4)  # four of them are running in the device (sent, not just queued)
    stopper = threading.Thread(target=rt.stop_worker, args=("axis-1",))
    stopper.start()
    for t in threads:
        t.join(30)
    stopper.join(30)
    done = sorted(v for v in outcomes.values() if isinstance(v, str))
    refused = [v for v in outcomes.values() if isinstance(v, DeviceUnavailable)]
    assert len(done) == 4 and len(refused) == 2, outcomes
    assert all(e.state == "stopping" for e in refused)

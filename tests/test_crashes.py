"""Crash containment: every way a worker dies is reported, and it is respawned as a new process."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import pytest

from bussdcc import Context, Device, Runtime, Service, WorkerState, message
from bussdcc.errors import BootError

from ._helpers import MakeRuntime, Recorder, Seq, Where, first_incarnation, lose_the_fork_server, wait_until


def _die(how: str) -> None:
    if how == "exception":
        raise KeyboardInterrupt("escapes every `except Exception`")
    if how == "os._exit":
        os._exit(13)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "abort":
        os.abort()


class Doomed(Service):
    """Dies on its first tick in its first incarnation only (the file says which)."""

    name = "doomed"
    interval = 0.02
    how = "os._exit"
    marker = ""

    def tick(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="tick", pid=os.getpid()))
        if first_incarnation(self.marker):
            _die(self.how)


EXPECTED = {
    "exception": ("exit code 1", None),
    "os._exit": ("exit code 13", None),
    "segfault": ("killed by SIGSEGV", "SIGSEGV"),
    "sigkill": ("killed by SIGKILL", "SIGKILL"),
    "abort": ("killed by SIGABRT", "SIGABRT"),
}


@pytest.mark.parametrize("how", list(EXPECTED))
def test_each_kind_of_death_is_reported_and_respawned(make_runtime: MakeRuntime, how: str, tmp_path: object) -> None:
    svc = Doomed()
    svc.how = how
    svc.marker = f"{tmp_path}/died"
    rt, rec = make_runtime(f"crash-{how.strip('_.')}", svc)
    (exited,) = rec.wait_for("worker.exited")
    ex = exited.payload
    assert isinstance(ex, message.WorkerExited)
    reason, signame = EXPECTED[how]
    assert ex.reason == reason and ex.signal == signame and ex.abnormal
    assert ex.worker == "doomed" and ex.incarnation == 1
    (err,) = rec.wait_for("service.error")
    assert isinstance(err.payload, message.ServiceError) and reason in err.payload.error
    rec.wait_for("service.restart")
    # The first incarnation may die before its `ready` leaves its socket;
    # the exit report is what always arrives.
    (second,) = rec.wait_for("worker.started", lambda e: e.payload.to_dict()["incarnation"] == 2)
    new_pid = second.payload.to_dict()["pid"]
    assert new_pid not in (0, ex.pid, os.getpid()), "respawned as a new process"
    rec.wait_for("test.where", lambda e: e.payload.to_dict()["pid"] == new_pid)
    from_first = [e for e in rec.of("test.where") if e.payload.to_dict()["pid"] == ex.pid]
    assert ex.emitted == 1 and len(from_first) == ex.dispatched, "the report matches what arrived"
    (status,) = rt.workers()
    assert status.restarts == 1 and status.incarnation == 2 and status.state is WorkerState.RUNNING
    rt.shutdown()
    assert not rt.halt_reason


class FlakyDevice(Device):
    kind = "flaky"

    def connect(self) -> None:
        assert self.ctx is not None
        self.ctx.emit(Where(who=self.id, step="connect", pid=os.getpid()))

    def crash(self) -> None:
        os._exit(9)


def test_a_crashed_device_is_reconnected_in_a_new_process(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("devcrash", FlakyDevice(id="dev"))
    (first,) = rt.workers()
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)
    failed = rec.wait_for("device.failed")
    assert "killed by SIGKILL" in failed[0].payload.to_dict()["error"]
    attached = rec.wait_for("device.attached", count=2)
    assert len(attached) == 2
    connects = rec.wait_for("test.where", count=2)
    assert connects[0].payload.to_dict()["pid"] == first.pid
    assert connects[1].payload.to_dict()["pid"] != first.pid


class Raiser(Service):
    name = "raiser"
    interval = 0.01
    restart: bool = True

    def tick(self, ctx: Context) -> None:
        self.n = getattr(self, "n", 0) + 1
        ctx.emit(Seq(i=self.n))
        if self.n == 2:
            raise ValueError("tick two fails")


def test_tick_exception_with_restart_continues_in_the_same_process(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("tickerr", Raiser())
    (err,) = rec.wait_for("service.error")
    assert isinstance(err.payload, message.ServiceError)
    assert "tick two fails" in err.payload.error and err.payload.traceback
    rec.wait_for("test.seq", lambda e: e.payload.to_dict()["i"] == 5)
    assert not rec.of("worker.exited") and rt.workers()[0].incarnation == 1


class GiveUp(Raiser):
    name = "giveup"
    restart = False


def test_tick_exception_without_restart_stops_the_service_as_a_failure(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("giveup", GiveUp())
    (fail,) = rec.wait_for("service.failure")
    assert "tick two fails" in fail.payload.to_dict()["error"]
    names = rec.names()
    assert names.index("service.error") < names.index("service.stopped") < names.index("service.failure")
    wait_until(lambda: rt.workers()[0].state is WorkerState.FAILED, what="failed state")
    assert (
        not rec.of(
            "test.seq",
        )
        or max(e.payload.to_dict()["i"] for e in rec.of("test.seq")) == 2
    )
    rt.shutdown()
    assert rt.halt_reason is None


class CriticalCrash(Service):
    name = "vital"
    interval = 0.05
    critical = True
    restart = False

    def tick(self, ctx: Context) -> None:
        self.ticks = getattr(self, "ticks", 0) + 1
        if self.ticks == 2:  # after boot has seen it ready
            os._exit(3)


def test_a_failing_critical_service_halts_the_runtime() -> None:
    rec = Recorder()
    rt = Runtime(name="critical")
    rt.register_process(rec)
    rt.register_service(CriticalCrash())
    rt.boot()
    assert rt.wait(timeout=20), "the runtime halted by itself"
    assert rt.halt_reason is not None and "vital" in rt.halt_reason
    names = rec.names()
    assert names.index("service.failure") < names.index("runtime.shutting_down") < names.index("runtime.shutdown")
    shut = rec.of("runtime.shutdown")[0].payload.to_dict()
    assert "vital" in (shut["reason"] or "")


class CriticalDevice(Device):
    kind = "plc"
    critical = True
    restart = False

    def connect(self) -> None:
        raise OSError("PLC unreachable")


def test_a_critical_failure_during_boot_fails_the_boot_cleanly() -> None:
    rec = Recorder()
    rt = Runtime(name="critboot")
    rt.register_process(rec)
    rt.attach_device(CriticalDevice(id="plc"))
    rt.register_service(Raiser())
    with pytest.raises(BootError, match="PLC unreachable"):
        rt.boot()
    assert not rt.booted and rt.run_dir is None and rt.workers() == []
    assert "service.started" not in rec.names(), "boot stopped at the failed critical device"
    assert rec.names()[-1] == "runtime.shutdown"


class BadConnect(Device):
    kind = "bad"
    restart = False

    def connect(self) -> None:
        raise OSError("no such port /dev/ttyX")


def test_a_connect_failure_is_reported_with_its_traceback(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("badconnect", BadConnect(id="port"))
    (failed,) = rec.of("device.failed")
    payload = failed.payload
    assert isinstance(payload, message.DeviceFailed)
    assert "no such port" in payload.error and payload.traceback and "OSError" in payload.traceback
    assert rt.workers()[0].state is WorkerState.FAILED
    assert rec.names().index("device.failed") < rec.names().index("runtime.booted"), "boot waited for it"


class EmitThenDie(Service):
    name = "emitdie"
    interval = 3600
    restart = False

    def tick(self, ctx: Context) -> None:
        for i in range(20000):
            ctx.emit(Seq(i=i, pad="x" * 100))
        os._exit(4)


def test_messages_of_a_crashed_worker_are_dispatched_or_counted_lost(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("lost", EmitThenDie())
    (exited,) = rec.wait_for("worker.exited", timeout=20)
    ex = exited.payload
    assert isinstance(ex, message.WorkerExited)
    assert ex.emitted == 20000
    seqs = [e.payload.to_dict()["i"] for e in rec.of("test.seq")]
    assert seqs == list(range(ex.dispatched)), "what arrived is a gap-free prefix"
    assert rt.stats().lost == ex.lost
    rt.shutdown()
    assert rt.stats().lost == ex.lost, "counters survive shutdown"


def test_losing_the_fork_server_halts_the_runtime_promptly() -> None:
    rec = Recorder()
    raiser = Raiser()
    raiser.stop_timeout = raiser.kill_timeout = 3600.0  # waiting them out for dead workers would time out
    rt = Runtime(name="noforks")
    rt.register_process(rec)
    rt.register_service(raiser)
    rt.boot()
    lose_the_fork_server(rt)
    (exited,) = [e.payload for e in rec.of("worker.exited") if e.payload.to_dict()["worker"] == "raiser"]
    assert isinstance(exited, message.WorkerExited) and exited.signal == "SIGKILL"
    assert not rec.of("service.restart")


class SlowStop(Service):
    """Its stop() never returns; optionally it also ignores SIGTERM."""

    name = "slowstop"
    interval = 3600
    stop_timeout = 0.3
    kill_timeout = 0.3
    ignore_term = False

    def start(self, ctx: Context) -> None:
        if self.ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def stop(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="stop", pid=os.getpid()))
        time.sleep(3600)


@pytest.mark.parametrize(("ignore_term", "signame"), [(False, "SIGTERM"), (True, "SIGKILL")])
def test_a_stop_that_hangs_escalates_to_sigterm_then_sigkill(ignore_term: bool, signame: str) -> None:
    rec = Recorder()
    svc = SlowStop()
    svc.ignore_term = ignore_term
    rt = Runtime(name=f"escalate-{signame.lower()}")
    rt.register_process(rec)
    rt.register_service(svc)
    rt.boot()
    rt.shutdown()  # stop() sleeps an hour: only the escalation lets this return within the test's timeout
    (exited,) = [e.payload for e in rec.of("worker.exited")]
    assert isinstance(exited, message.WorkerExited)
    assert exited.signal == signame and exited.reason.endswith(f"(killed by {signame})")
    assert exited.cause == "hung" and "stop/disconnect ran longer than stop_timeout" in exited.reason
    assert rec.of("test.where"), "the graceful stop was tried first"
    assert rec.names().index("service.stopped") < rec.names().index("runtime.shutdown")

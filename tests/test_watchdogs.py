"""Watchdogs: hung ticks and connects, stopped heartbeats, memory and CPU limits, stray helpers."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bussdcc import Context, Device, Event, Message, Process, Runtime, Service, WorkerState, message

from ._helpers import MakeRuntime, Recorder, Seq, Where, first_incarnation, lose_the_fork_server, wait_until


class FirstOnly(Service):
    """Misbehaves in its first incarnation only (a marker file says it has)."""

    interval = 0.05
    marker = ""

    def first(self) -> bool:
        return first_incarnation(self.marker)


class Hanger(FirstOnly):
    name = "hanger"
    how = "loop"
    tick_timeout = 0.5
    heartbeat_interval = 0.1
    heartbeat_timeout = 0.8

    def tick(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="tick", pid=os.getpid()))
        if not self.first():
            return
        if self.how == "loop":
            while True:
                pass
        elif self.how == "c_call":
            ctypes.CDLL(None).sleep(1000)  # releases the GIL: the heartbeat goes on
        elif self.how == "gil":
            ctypes.PyDLL(None).sleep(1000)  # holds the GIL: the heartbeat stops


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("loop", "hung: tick ran longer than 0.5s"),
        ("c_call", "hung: tick ran longer than 0.5s"),
        ("gil", "hung: no heartbeat for"),
    ],
)
def test_a_hung_worker_is_killed_and_replaced(make_runtime: MakeRuntime, how: str, reason: str, tmp_path: Path) -> None:
    svc = Hanger()
    svc.how = how
    svc.marker = str(tmp_path / "hung")
    if how == "gil":
        svc.tick_timeout = 60.0  # only the heartbeat can tell
    rt, rec = make_runtime(f"hang-{how}", svc)
    (hung,) = rec.wait_for("worker.hung")
    first_pid = rec.of("test.where")[0].payload.to_dict()["pid"]
    assert hung.payload.to_dict()["pid"] == first_pid
    assert hung.payload.to_dict()["reason"].startswith(reason)
    (exited,) = rec.wait_for("worker.exited")
    assert isinstance(exited.payload, message.WorkerExited)
    assert exited.payload.cause == "hung" and exited.payload.signal == "SIGKILL" and exited.payload.abnormal
    rec.wait_for("test.where", lambda e: e.payload.to_dict()["pid"] != first_pid)
    (status,) = rt.workers()
    assert status.incarnation == 2 and status.last_exit is not None and status.last_exit.startswith(reason)


class StuckConnect(Device):
    kind = "stuck"
    start_timeout = 0.5
    restart = False

    def connect(self) -> None:
        time.sleep(3600)


def test_a_connect_past_its_deadline_is_a_hang_and_boot_goes_on(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("stuckconnect", StuckConnect(id="plc"))
    assert rt.booted
    (hung,) = rec.of("worker.hung")
    assert hung.payload.to_dict()["reason"] == "hung: connect ran longer than start_timeout 0.5s"
    (exited,) = rec.of("worker.exited")
    assert exited.payload.to_dict()["cause"] == "hung"
    assert rec.of("device.failed") and rec.of("worker.gave_up")
    assert [w.state for w in rt.workers()] == [WorkerState.FAILED]


class Hog(FirstOnly):
    name = "hog"
    interval = 0.02
    max_rss = 120 * 2**20

    def start(self, ctx: Context) -> None:
        self.blobs: list[bytes] = []
        self.hog = self.first()
        ctx.emit(Where(who=self.name, step="start", pid=os.getpid()))

    def tick(self, ctx: Context) -> None:
        if self.hog and len(self.blobs) < 100:  # at most 800 MiB, should the limit never bite
            self.blobs.append(b"\1" * (8 * 2**20))  # written, so resident


class Spinner(FirstOnly):
    name = "spinner"
    max_cpu = 15.0  # far below one core, so a loaded machine still gives it more
    cpu_window = 1.0

    def start(self, ctx: Context) -> None:
        self.spin = self.first()
        self.interval = 0.0 if self.spin else 3600.0  # spin without a pause, then idle
        ctx.emit(Where(who=self.name, step="start", pid=os.getpid()))

    def tick(self, ctx: Context) -> None:
        end = time.monotonic() + 0.2
        while self.spin and time.monotonic() < end:
            pass


@pytest.mark.parametrize("kind", ["rss", "cpu"])
def test_a_worker_over_its_limit_is_killed_and_respawned(make_runtime: MakeRuntime, kind: str, tmp_path: Path) -> None:
    svc: FirstOnly = Hog() if kind == "rss" else Spinner()
    svc.marker = str(tmp_path / "over")
    _, rec = make_runtime(f"limit-{kind}", svc)
    (breach,) = rec.wait_for("worker.limit_exceeded", timeout=20)
    info = breach.payload.to_dict()
    assert info["limit"] == kind and info["value"] > info["maximum"]
    assert info["reason"].startswith(f"{kind}_limit: ")
    (exited,) = rec.wait_for("worker.exited")
    assert exited.payload.to_dict()["cause"] == f"{kind}_limit"
    starts = rec.wait_for("test.where", count=2)
    assert starts[0].payload.to_dict()["pid"] != starts[1].payload.to_dict()["pid"]


class Spawner(Service):
    """Starts a helper process (a vendor binary, say) and leaves it running."""

    name = "spawner"
    interval = 3600.0
    own_session = False

    def start(self, ctx: Context) -> None:
        # The helper is never waited for: that is the point of the test.
        helper = subprocess.Popen(["sleep", "1000"], start_new_session=self.own_session)
        ctx.emit(Where(who=self.name, step="helper", pid=helper.pid))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("own_session", [False, True], ids=["same-group", "own-session"])
def test_helpers_of_a_worker_die_with_it_when_killed_respawned_or_stopped(
    make_runtime: MakeRuntime, own_session: bool
) -> None:
    svc = Spawner()
    svc.own_session = own_session
    rt, rec = make_runtime("helpers", svc)
    first = rec.wait_for("test.where")[0].payload.to_dict()["pid"]
    assert not _gone(first)
    (status,) = rt.workers()
    os.kill(status.pid or 0, signal.SIGKILL)
    wait_until(lambda: _gone(first), timeout=30, what="the killed worker's helper to go")
    second = rec.wait_for("test.where", count=2)[1].payload.to_dict()["pid"]
    assert not _gone(second)
    rt.shutdown()
    assert _gone(second), "a stopped worker's helper is gone once shutdown returns"


class Producer(Service):
    name = "producer"
    interval = 3600.0
    tick_timeout = 1.0

    def tick(self, ctx: Context) -> None:
        for i in range(6000):  # ~24 MiB: more than the pipes hold, so emit must wait for the parent
            ctx.emit(Seq(i=i, pad="x" * 4096))


class SlowOnce(Process):
    """A Process in the parent that holds dispatch up for 3 s once."""

    name = "slow"
    slept = False

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq) and not self.slept:
            self.slept = True
            time.sleep(3)  # the stimulus: a slow consumer, not a wait for a condition


def test_waiting_on_a_slow_parent_does_not_count_against_the_tick_deadline() -> None:
    rec = Recorder()
    rt = Runtime(name="backpressure")
    rt.register_process(SlowOnce())
    rt.register_process(rec)
    rt.register_service(Producer())
    with rt:
        rec.wait_for("test.seq", count=6000, timeout=30)
        assert not rec.of("worker.hung") and not rec.of("worker.exited")


class Backgrounder(Service):
    """Leaves short-lived background processes behind, as shell scripts do."""

    name = "backgrounder"
    interval = 0.02

    def start(self, ctx: Context) -> None:
        self.n = 0

    def tick(self, ctx: Context) -> None:
        if self.n < 30:
            self.n += 1
            subprocess.run("sleep 0.01 &", shell=True, check=True)
            ctx.emit(Where(who=self.name, step="spawned", pid=self.n))


def _zombies() -> list[int]:
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_orphans_a_live_worker_leaves_are_reaped(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("zombies", Backgrounder())
    rec.wait_for("test.where", count=30)
    wait_until(lambda: not _zombies(), timeout=10, what="no zombies left")
    assert [w.incarnation for w in rt.workers()] == [1]


def test_losing_the_fork_server_kills_the_helpers_of_its_workers() -> None:
    rec = Recorder()
    rt = Runtime(name="noforks-helpers")
    rt.register_process(rec)
    rt.register_service(Spawner())
    rt.boot()
    try:
        helper = rec.wait_for("test.where")[0].payload.to_dict()["pid"]
        lose_the_fork_server(rt)
        wait_until(lambda: _gone(helper), timeout=30, what="the helper to go")
    finally:
        rt.shutdown()

"""Supervision policy: restart types, intensity, backoff, group strategies, visibility."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

from bussdcc import Context, Device, Runtime, Service, WorkerState, message
from bussdcc.errors import RegistrationError, UnknownWorker
from bussdcc.kernel._components import tick_deadline

from ._helpers import MakeRuntime, Recorder, Seq, Where, lose_the_fork_server, wait_until


class Exiter(Service):
    """Ends on its first tick of every incarnation: normally (``sys.exit()``) or with exit code 3."""

    name = "exiter"
    interval = 0.01
    normal = True
    backoff_initial = 0.01

    def tick(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="tick", pid=os.getpid()))
        if self.normal:
            sys.exit()
        os._exit(3)


def _state(rt: Runtime, name: str) -> WorkerState:
    (status,) = [w for w in rt.workers() if w.name == name]
    return status.state


@pytest.mark.parametrize(
    ("restart", "normal", "respawned", "final"),
    [
        (True, True, True, None),
        (True, False, True, None),
        ("permanent", True, True, None),
        ("transient", True, False, WorkerState.STOPPED),
        ("transient", False, True, None),
        ("temporary", True, False, WorkerState.STOPPED),
        ("temporary", False, False, WorkerState.FAILED),
        (False, False, False, WorkerState.FAILED),
    ],
)
def test_restart_policy_decides_what_follows_an_exit(
    restart: Any, normal: bool, respawned: bool, final: WorkerState | None
) -> None:
    rec = Recorder()
    svc = Exiter()
    svc.restart = restart
    svc.normal = normal
    rt = Runtime(name="policy")
    rt.register_process(rec)
    rt.register_service(svc)
    with rt:
        (first, *_) = rec.wait_for("worker.exited")
        exited = first.payload
        assert isinstance(exited, message.WorkerExited)
        assert exited.cause == ("exited" if normal else "exit_code")
        assert exited.abnormal is not normal
        if respawned:
            # The second incarnation ends like the first (it may take its ready frame with it).
            second = rec.wait_for("worker.exited", count=2)[1].payload.to_dict()
            assert second["incarnation"] == 2 and second["pid"] != exited.pid
            assert rec.of("worker.backoff"), "the respawn decision is announced"
        else:
            wait_until(lambda: _state(rt, "exiter") is final, what=f"state {final}")
            (status,) = rt.workers()
            assert status.incarnation == 1 and status.restarts == 0
            assert not rec.of("worker.backoff")
            if final is WorkerState.FAILED:
                (gave_up,) = rec.wait_for("worker.gave_up")  # said after the hub's state changed
                assert gave_up.payload.to_dict()["pid"] == exited.pid


class CrashLoop(Service):
    """Dies on every first tick."""

    name = "crashloop"
    interval = 0.01

    def tick(self, ctx: Context) -> None:
        os._exit(7)


class Steady(Service):
    """Ticks and counts, to show the rest of the runtime keeps working."""

    name = "steady"
    interval = 0.02

    def start(self, ctx: Context) -> None:
        self.i = 0

    def tick(self, ctx: Context) -> None:
        self.i += 1
        ctx.emit(Seq(i=self.i))


@pytest.mark.parametrize("max_restarts", [None, 3], ids=["default-policy", "three-restarts"])
def test_a_crash_loop_backs_off_then_gives_up_while_the_rest_runs(
    make_runtime: MakeRuntime, max_restarts: int | None
) -> None:
    loop = CrashLoop()
    if max_restarts is not None:
        loop.max_restarts = max_restarts
    n = loop.max_restarts
    rt, rec = make_runtime("crashloop", Steady(), loop)
    rec.wait_for("worker.gave_up", timeout=20)
    ticks_then = len(rec.of("test.seq"))
    rec.wait_for("test.seq", count=ticks_then + 5)
    assert _state(rt, "crashloop") is WorkerState.FAILED
    assert _state(rt, "steady") is WorkerState.RUNNING
    # A worker that dies right after starting may take its ready frame with it: count exits.
    exits = [e for e in rec.of("worker.exited") if e.payload.to_dict()["worker"] == "crashloop"]
    assert len(exits) == 1 + n and (max_restarts is not None or n == 5)  # the defaults: 5 restarts within 60 s
    assert [(w.incarnation, w.restarts) for w in rt.workers() if w.name == "crashloop"] == [(1 + n, n)]
    assert rt.stats().restarts == {"steady": 0, "crashloop": n}
    assert len(rec.of("service.restart")) == n
    (failure,) = rec.of("service.failure")
    assert failure.payload.to_dict()["service"] == "crashloop"
    assert f"{n} restarts within 60s" in failure.payload.to_dict()["error"]
    # The first respawn is immediate; each later one waits about twice as long (+-25% jitter).
    delays = [e.payload.to_dict()["delay"] for e in rec.of("worker.backoff")]
    assert delays[0] == 0.0
    for k, delay in enumerate(delays[1:]):
        expected = loop.backoff_initial * 2**k
        assert expected * 0.75 <= delay <= expected * 1.25, (k, delay, delays)
    assert [e.payload.to_dict()["attempt"] for e in rec.of("worker.backoff")] == list(range(1, n + 1))


class SlowCrasher(Service):
    """Runs a while, then dies: every incarnation counts as healthy when backoff_reset is short."""

    name = "slowcrasher"
    interval = 0.4
    backoff_initial = 5.0
    backoff_reset = 0.2

    def start(self, ctx: Context) -> None:
        self.ticks = 0

    def tick(self, ctx: Context) -> None:
        self.ticks += 1
        if self.ticks == 2:
            os._exit(9)


def test_backoff_starts_over_after_a_healthy_run(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("backoffreset", SlowCrasher())
    backoffs = rec.wait_for("worker.backoff", count=3, timeout=20)
    # Without the reset the second delay would be about 5 s.
    assert [e.payload.to_dict()["delay"] for e in backoffs[:3]] == [0.0, 0.0, 0.0]


def test_shutdown_during_a_backoff_does_not_wait_for_it() -> None:
    rec = Recorder()
    loop = CrashLoop()
    loop.backoff_initial = loop.backoff_max = 3600.0  # waiting it out would time the test out
    rt = Runtime(name="backoffwait")
    rt.register_process(rec)
    rt.register_service(loop)
    rt.boot()
    try:
        rec.wait_for("worker.backoff", lambda e: e.payload.to_dict()["delay"] > 1000)
        assert _state(rt, "crashloop") is WorkerState.BACKOFF
    finally:
        rt.shutdown()
    assert rec.names()[-1] == "runtime.shutdown"


class Member(Service):
    """A group member that reports where it started; its stop may take a while."""

    interval = 3600.0

    def __init__(self, name: str, *, slow_stop: float = 0.0, enabled: bool = True) -> None:
        self.name = name
        self.slow_stop = slow_stop
        self.enabled = enabled

    def start(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="start", pid=os.getpid()))

    def stop(self, ctx: Context) -> None:
        time.sleep(self.slow_stop)  # the stimulus: a slow disconnect


def _pids(rt: Runtime) -> dict[str, int | None]:
    return {w.name: w.pid for w in rt.workers()}


def _after(rec: Recorder, mark: int, name: str) -> list[str]:
    """The workers named by the ``name`` events recorded after index ``mark``."""
    out = []
    for e in rec.events[mark:]:
        if e.payload.name == name:
            d = e.payload.to_dict()
            out.append(d.get("worker") or d.get("service") or "")
    return out


@pytest.mark.parametrize(
    ("strategy", "restarted", "stopped"),
    [
        ("one_for_one", ["b"], []),
        ("one_for_all", ["a", "b", "c"], ["c", "a"]),
        ("rest_for_one", ["b", "c"], ["c"]),
    ],
)
def test_group_strategies_restart_the_right_members_in_order(
    strategy: Any, restarted: list[str], stopped: list[str]
) -> None:
    rec = Recorder()
    rt = Runtime(name=f"group-{strategy}")
    rt.register_process(rec)
    rt.register_group("line", [Member("a"), Member("b"), Member("c")], strategy=strategy)
    with rt:
        assert _after(rec, 0, "worker.started") == ["a", "b", "c"]  # each ready before the next
        before = _pids(rt)
        mark = len(rec.events)
        os.kill(before["b"] or 0, signal.SIGKILL)
        wait_until(
            lambda: all(
                w.incarnation == (2 if w.name in restarted else 1) and w.state is WorkerState.RUNNING
                for w in rt.workers()
            ),
            what="the group restart",
        )
        after = _pids(rt)
        for name in "abc":
            assert (after[name] != before[name]) is (name in restarted), name
        # The hub shows a member running before the dispatch thread has said so: wait for the
        # saying. The last start comes after every stop and start of the restart (dispatch is FIFO).
        rec.wait_for("worker.started", lambda e: e.payload.to_dict()["incarnation"] == 2, count=len(restarted))
        assert _after(rec, mark, "worker.started") == restarted
        assert _after(rec, mark, "service.stopped") == stopped  # reverse order
        assert {w.name: w.group for w in rt.workers()} == {"a": "line", "b": "line", "c": "line"}
        mark = len(rec.events)
    assert _after(rec, mark, "service.stopped") == ["c", "b", "a"]


def test_a_member_that_gives_up_takes_its_one_for_all_group_down() -> None:
    rec = Recorder()
    b = Member("b")
    b.max_restarts = 0
    rt = Runtime(name="group-giveup")
    rt.register_process(rec)
    rt.register_group("line", [Member("a"), b, Member("c")], strategy="one_for_all")
    with rt:
        os.kill(_pids(rt)["b"] or 0, signal.SIGKILL)
        wait_until(lambda: all(w.state is WorkerState.FAILED for w in rt.workers()), what="the group to fail")
        rec.wait_for("worker.gave_up", count=3)  # said on the dispatch thread, after the hub's state changed
        reasons = {e.payload.to_dict()["worker"]: e.payload.to_dict()["reason"] for e in rec.of("worker.gave_up")}
        assert "0 restarts within" in reasons["b"]
        assert reasons["a"] == reasons["c"] == "group member 'b' gave up"


class Sensor(Device):
    kind = "sensor"


def test_groups_and_policies_are_validated_before_anything_starts() -> None:
    rt = Runtime(name="validate")
    with pytest.raises(RegistrationError, match="devices start before services"):
        rt.register_group("g", [Member("s"), Sensor(id="d")])
    with pytest.raises(RegistrationError, match="strategy must be one of"):
        rt.register_group("g", [Member("s")], strategy="all_for_one")  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="registered already"):
        rt.register_group("g", [Member("s"), Member("s")])
    assert rt.workers() == [], "a refused group registers none of its members"
    for member in ("s", "d"):
        with pytest.raises(UnknownWorker):
            rt.component(member)
    cases: list[tuple[str, object, str]] = [
        ("restart", "sometimes", "restart must be True, False or one of"),
        ("max_rss", -1, "max_rss must be None or a positive int"),
        ("max_cpu", 0, "max_cpu must be None or a positive number"),
        ("tick_timeout", float("nan"), "tick_timeout must be None or a positive number"),
        ("heartbeat_timeout", 0.1, "heartbeat_timeout must be longer than heartbeat_interval"),
        ("backoff_reset", -1, "backoff_reset must be a number >= 0"),
        ("max_restarts", True, "max_restarts must be an int >= 0"),
    ]
    for attr, value, error in cases:
        svc = Member(f"bad-{attr}")
        setattr(svc, attr, value)
        with pytest.raises(RegistrationError, match=error):
            rt.register_service(svc)


def test_workers_status_reports_incarnation_restarts_uptime_and_usage(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("status", Member("m"))
    (status,) = wait_until(lambda: [w for w in rt.workers() if w.rss is not None and w.cpu_percent is not None])
    assert status.state is WorkerState.RUNNING and status.incarnation == 1
    assert status.restarts == status.restarts_in_window == 0 and status.last_exit is None
    assert status.uptime is not None and status.uptime > 0
    assert status.rss > 1_000_000 and status.cpu_percent >= 0  # type: ignore[operator]
    os.kill(status.pid or 0, signal.SIGKILL)
    (status,) = wait_until(lambda: [w for w in rt.workers() if w.incarnation == 2 and w.state is WorkerState.RUNNING])
    assert status.restarts == status.restarts_in_window == 1
    assert status.last_exit == "killed by SIGKILL"
    assert rt.stats().restarts == {"m": 1}


def test_shutdown_during_a_group_restart_respawns_nothing_and_does_not_wait() -> None:
    rec = Recorder()
    b = Member("b")
    b.backoff_initial = b.backoff_max = 3600.0  # waiting it out would time the test out
    rt = Runtime(name="group-shutdown")
    rt.register_process(rec)
    rt.register_group("line", [Member("a"), b, Member("c")], strategy="one_for_all")
    rt.boot()
    try:
        os.kill(_pids(rt)["b"] or 0, signal.SIGKILL)  # the first respawn is immediate
        wait_until(lambda: all(w.incarnation == 2 and w.state is WorkerState.RUNNING for w in rt.workers()))
        os.kill(_pids(rt)["b"] or 0, signal.SIGKILL)  # the second waits an hour, the others stopped meanwhile
        wait_until(lambda: all(w.state is WorkerState.BACKOFF for w in rt.workers()), what="the group to wait")
        mark = len(rec.events)
    finally:
        rt.shutdown()
    assert _after(rec, mark, "worker.started") == []


def _group_with_slow_c(name: str) -> tuple[Runtime, Recorder]:
    rec = Recorder()
    rt = Runtime(name=name)
    rt.register_process(rec)
    members = [Member("a"), Member("b"), Member("c", slow_stop=1.0)]
    for member in members:
        # c's own stop takes 1 s; waiting out any of these would time the test out.
        member.stop_timeout = member.kill_timeout = member.start_timeout = 3600.0
    rt.register_group("line", members, strategy="one_for_all")
    return rt, rec


def _shutdown_marks(rec: Recorder) -> int:
    return rec.names().index("runtime.shutting_down")


def test_shutdown_while_a_group_restart_stops_a_member_is_prompt() -> None:
    rt, rec = _group_with_slow_c("group-holding")
    rt.boot()
    try:
        os.kill(_pids(rt)["b"] or 0, signal.SIGKILL)
        wait_until(lambda: _state(rt, "c") is WorkerState.STOPPING, what="the group restart to stop c")
    finally:
        rt.shutdown()
    assert _after(rec, _shutdown_marks(rec), "worker.started") == []


def test_a_member_dying_during_shutdown_brings_nothing_back() -> None:
    rt, rec = _group_with_slow_c("group-dying")
    rt.boot()
    b = _pids(rt)["b"] or 0
    stopping = threading.Thread(target=rt.shutdown, name="test-shutdown")
    stopping.start()
    try:
        wait_until(lambda: _state(rt, "c") is WorkerState.STOPPING, what="shutdown to stop c")
        os.kill(b, signal.SIGKILL)
    finally:
        stopping.join(30)
    assert not stopping.is_alive(), "shutdown waited for something it should not have"
    assert _after(rec, _shutdown_marks(rec), "worker.started") == []
    assert rec.names()[-1] == "runtime.shutdown"


def test_losing_the_fork_server_during_a_group_restart_halts_the_runtime() -> None:
    rt, rec = _group_with_slow_c("group-noforks")
    rt.boot()
    try:
        os.kill(_pids(rt)["b"] or 0, signal.SIGKILL)
        wait_until(lambda: _state(rt, "c") is WorkerState.STOPPING, what="the group restart to stop c")
        lose_the_fork_server(rt)
        assert not [e for e in rec.of("worker.started") if e.payload.to_dict()["incarnation"] > 1]
    finally:
        rt.shutdown()


def test_a_group_restart_does_not_start_a_disabled_member() -> None:
    rec = Recorder()
    rt = Runtime(name="group-disabled")
    rt.register_process(rec)
    rt.register_group("line", [Member("a"), Member("b", enabled=False), Member("c")], strategy="one_for_all")
    with rt:
        assert _state(rt, "b") is WorkerState.STOPPED
        os.kill(_pids(rt)["c"] or 0, signal.SIGKILL)
        wait_until(
            lambda: all(w.incarnation == 2 and w.state is WorkerState.RUNNING for w in rt.workers() if w.name != "b")
        )
        assert _state(rt, "b") is WorkerState.STOPPED and _pids(rt)["b"] is None


class CrashingDevice(Device):
    """Connects, then its process dies half a second later (after boot is over)."""

    kind = "flaky"
    max_restarts = 2
    backoff_initial = 0.01

    def connect(self) -> None:
        threading.Timer(0.5, os._exit, (5,)).start()


@pytest.mark.parametrize("critical", [False, True])
def test_a_device_past_its_intensity_fails_and_a_critical_one_halts_the_runtime(critical: bool) -> None:
    rec = Recorder()
    dev = CrashingDevice(id="plc")
    dev.critical = critical
    rt = Runtime(name=f"intensity-{critical}")
    rt.register_process(rec)
    rt.register_service(Steady())
    rt.attach_device(dev)
    rt.boot()
    try:
        (gave_up,) = rec.wait_for("worker.gave_up")
        assert "2 restarts within 60s" in gave_up.payload.to_dict()["reason"]
        assert len(rec.of("device.failed")) == 3  # the first incarnation and both respawns
        if critical:
            assert rt.wait(timeout=20), "a critical worker given up on halts the runtime"
            assert rt.halt_reason is not None and "critical device 'plc' failed" in rt.halt_reason
        else:
            assert _state(rt, "plc") is WorkerState.FAILED
            ticks = len(rec.of("test.seq"))
            rec.wait_for("test.seq", count=ticks + 3)  # the rest keeps working
    finally:
        rt.shutdown()


def test_the_default_tick_deadline_follows_the_interval() -> None:
    svc = Member("m")
    svc.interval = 0.5
    assert tick_deadline(svc) == 10.0  # at least 10 s
    svc.interval = 30.0
    assert tick_deadline(svc) == 300.0  # else ten intervals
    svc.tick_timeout = 2.0
    assert tick_deadline(svc) == 2.0

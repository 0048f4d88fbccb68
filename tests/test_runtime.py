"""The runtime with real worker processes: order, dispatch both ways, state, isolation."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from bussdcc import Context, Device, Event, Interface, Message, Process, Runtime, Service, WorkerState, message
from bussdcc.errors import BootError, RegistrationError, RuntimeStateError

from ._helpers import Echo, MakeRuntime, Ping, Recorder, Seq, Where, first_incarnation, wait_until


class Sensor(Device):
    kind = "sensor"

    def connect(self) -> None:
        assert self.ctx is not None
        self.ctx.emit(Where(who=self.id, step="connect", pid=os.getpid()))

    def disconnect(self) -> None:
        assert self.ctx is not None
        self.ctx.emit(Where(who=self.id, step="disconnect", pid=os.getpid()))


class Ticker(Service):
    interval = 0.05

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="start", pid=os.getpid()))

    def tick(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="tick", pid=os.getpid()))

    def stop(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="stop", pid=os.getpid()))


class Deaf(Ticker):
    """Does not override handle_event, but would say so, from its own process, if sent an event."""

    interval = 3600.0

    def start(self, ctx: Context) -> None:
        def heard(ctx: Context, evt: Event[Message]) -> None:
            ctx.emit(Where(who=self.name, step="heard", pid=os.getpid()))

        # On the instance, in the worker only: the runtime decides from the class.
        self.handle_event = heard  # type: ignore[method-assign]
        super().start(ctx)


def _steps(rec: Recorder) -> list[tuple[str, str]]:
    return [(e.payload.who, e.payload.step) for e in rec.of("test.where") if isinstance(e.payload, Where)]


class Panel(Interface):
    name = "panel"


def _order(rec: Recorder) -> list[str]:
    keep = {
        "runtime.booting", "runtime.booted", "runtime.shutting_down", "runtime.shutdown",
        "device.attached", "device.detached", "process.started", "process.stopped",
        "interface.started", "interface.stopped", "service.started", "service.stopped",
    }  # fmt: skip
    out = []
    for e in rec.events:
        if e.payload.name in keep:
            who = next(iter(e.payload.to_dict().values()), None) if e.payload.to_dict() else None
            tag = who if e.payload.name.split(".")[0] in {"device", "process", "interface", "service"} else None
            out.append(f"{e.payload.name}:{tag}" if tag else e.payload.name)
    return out


def test_boot_and_shutdown_follow_the_seed_order_in_separate_processes() -> None:
    rec = Recorder()
    rt = Runtime(name="order")
    rt.attach_device(Sensor(id="d1"))
    rt.attach_device(Sensor(id="d2"))
    rt.register_process(rec)
    rt.register_interface(Panel())
    rt.register_service(Ticker("s1"))
    rt.register_service(Ticker("s2"))
    rt.boot()
    assert rt.booted
    rt.shutdown()
    assert not rt.booted
    assert _order(rec) == [
        "runtime.booting",
        "device.attached:d1", "device.attached:d2",
        "process.started:recorder", "interface.started:panel",
        "runtime.booted",
        "service.started:s1", "service.started:s2",
        "runtime.shutting_down",
        "service.stopped:s2", "service.stopped:s1",
        "interface.stopped:panel", "process.stopped:recorder",
        "device.detached:d2", "device.detached:d1",
        "runtime.shutdown",
    ]  # fmt: skip
    pids = {}
    for e in rec.of("test.where"):
        assert isinstance(e.payload, Where)
        pids.setdefault(e.payload.who, set()).add(e.payload.pid)
        assert e.source == e.payload.who  # the source is the worker that emitted it
    assert set(pids) == {"d1", "d2", "s1", "s2"}
    assert all(len(p) == 1 for p in pids.values()), "each component's code runs in one process"
    all_pids = [next(iter(p)) for p in pids.values()]
    assert os.getpid() not in all_pids and len(set(all_pids)) == 4
    steps = [(e.payload.who, e.payload.step) for e in rec.of("test.where") if isinstance(e.payload, Where)]
    assert ("d1", "disconnect") in steps and ("s1", "stop") in steps


def test_boot_and_shutdown_are_idempotent_and_reboot_works() -> None:
    rec = Recorder()
    rt = Runtime(name="idem")
    rt.register_process(rec)
    rt.register_service(Ticker("t"))
    with rt:
        rt.boot()
        assert rt.booted
    rt.shutdown()
    assert rec.names().count("runtime.booting") == 1 and rec.names().count("runtime.shutdown") == 1
    rt.boot()
    rec.wait_for("test.where", lambda e: e.payload.to_dict()["step"] == "tick", count=2)
    rt.shutdown()
    assert rec.names().count("runtime.shutdown") == 2


def test_run_dir_is_private_and_removed(run_base: object) -> None:
    rt = Runtime(name="rundir")
    with pytest.raises(RuntimeStateError):
        _ = rt.endpoint
    rt.register_service(Ticker("t"))
    rt.boot()
    try:
        run_dir = rt.run_dir
        assert run_dir is not None
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert rt.endpoint == f"ipc://{run_dir}/workers.sock"
        assert (run_dir / "workers.sock").exists()
    finally:
        rt.shutdown()
    assert not run_dir.exists()


def test_dispatch_goes_both_ways_through_the_parent(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("both", Echo(), Deaf("quiet"))
    for n in range(5):
        rt.emit(Ping(n=n))
    pongs = rec.wait_for("test.pong", count=5)
    assert [p.payload.to_dict()["n"] for p in pongs] == [0, 1, 2, 3, 4]
    assert all(p.payload.to_dict()["pid"] not in (0, os.getpid()) for p in pongs)
    assert all(p.source == "echo" for p in pongs)
    # Only workers whose class handles events are sent anything: a graceful stop delivers
    # whatever was sent before it, so anything sent to the quiet one would be heard of by now.
    rt.stop_worker("quiet")
    rt.shutdown()
    assert ("quiet", "start") in _steps(rec) and ("quiet", "heard") not in _steps(rec)


class Counter(Service):
    """Writes state from its process and reports what it reads back."""

    name = "counter"
    interval = 0.01

    def start(self, ctx: Context) -> None:
        self.n = 0

    def tick(self, ctx: Context) -> None:
        if self.n < 20:
            self.n += 1
            ctx.state.set("counter.value", self.n)
            ctx.state.update("counter.total", lambda v: v + self.n, default=0)
            ctx.emit(Seq(i=ctx.state.get("counter.value")))


def test_state_written_in_a_worker_reaches_the_parent_in_order(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("state", Counter())
    seqs = rec.wait_for("test.seq", count=20)
    assert [s.payload.to_dict()["i"] for s in seqs] == list(range(1, 21))  # the worker reads its own writes
    # State writes travel in order with the messages: once the last
    # message arrived, its state write has too.
    assert rt.state.get("counter.value") == 20
    assert rt.state.get("counter.total") == sum(range(1, 21))


class Burst(Service):
    name = "burst"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        for i in range(5000):
            ctx.emit(Seq(i=i))


def test_messages_from_one_worker_arrive_in_emission_order(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("fifo", Burst())
    seqs = rec.wait_for("test.seq", count=5000)
    rt.shutdown()
    assert [s.payload.to_dict()["i"] for s in seqs] == list(range(5000))


class Fragile(Process):
    name = "fragile"

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping) or evt.payload.name == "process.error":
            raise ValueError(f"cannot handle {evt.payload.name}")


def test_process_errors_are_isolated_without_recursion() -> None:
    rec = Recorder()
    rt = Runtime(name="perr")
    rt.register_process(Fragile())
    rt.register_process(rec)
    with rt:
        rt.emit(Ping(n=1))
        (err,) = rec.of("process.error")
        assert isinstance(err.payload, message.ProcessError)
        assert err.payload.process == "fragile" and "cannot handle test.ping" in err.payload.error
        assert err.payload.evt is not None and err.payload.evt.payload == Ping(n=1)
        assert err.payload.traceback and "ValueError" in err.payload.traceback
        assert rec.of("test.ping"), "the other process still got the message"


class Moody(Service):
    name = "moody"
    interval = 3600

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            raise RuntimeError(f"moody about {evt.payload.n}")
        if evt.payload.name == "service.error":
            raise RuntimeError("would recurse")


def test_service_handle_event_errors_become_service_error_in_the_worker(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("serr", Moody())
    rt.emit(Ping(n=7))
    (err,) = rec.wait_for("service.error")
    assert isinstance(err.payload, message.ServiceError)
    assert err.source == "moody" and "moody about 7" in err.payload.error
    assert err.payload.evt is not None and err.payload.evt.payload == Ping(n=7)
    rt.emit(Ping(n=8))
    rec.wait_for("service.error", count=2)
    rt.shutdown()
    assert len(rec.of("service.error")) == 2


class Exclusive(Process):
    """Fails loudly if its handler is ever entered twice at once."""

    name = "exclusive"

    def __init__(self) -> None:
        self.inside = threading.Lock()
        self.overlaps = 0
        self.seen = 0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if not self.inside.acquire(blocking=False):
            self.overlaps += 1
            return
        try:
            self.seen += 1
        finally:
            self.inside.release()


def test_a_process_is_never_called_concurrently_with_itself() -> None:
    proc = Exclusive()
    rt = Runtime(name="excl")
    rt.register_process(proc)
    rt.register_service(Burst())
    with rt:

        def pinger() -> None:
            for i in range(2000):
                rt.emit(Ping(n=i))

        threads = [threading.Thread(target=pinger) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: proc.seen >= 5000 + 6000, what="all events")
    assert proc.overlaps == 0


def test_registration_is_validated() -> None:
    rt = Runtime(name="reg")
    rt.attach_device(Sensor(id="x"))
    with pytest.raises(RegistrationError, match="already"):
        rt.attach_device(Sensor(id="x"))
    with pytest.raises(RegistrationError, match="already"):
        rt.register_service(Ticker("x"))  # worker names are shared by services and devices
    with pytest.raises(RegistrationError, match="takes a Device"):
        rt.attach_device(Ticker("y"))  # type: ignore[arg-type]
    bad = Ticker("bad")
    bad.stop_timeout = -1
    with pytest.raises(RegistrationError, match="stop_timeout"):
        rt.register_service(bad)
    with pytest.raises(RegistrationError, match="non-empty"):
        rt.register_service(Ticker(""))
    rt.register_process(Recorder())
    with pytest.raises(RegistrationError, match="already"):
        rt.register_process(Recorder())
    with pytest.raises(RegistrationError, match="takes an Interface"):
        rt.register_interface(Recorder())  # type: ignore[arg-type]


def test_workers_report_typed_status() -> None:
    rt = Runtime(name="status")
    rt.attach_device(Sensor(id="dev"))
    rt.register_service(Ticker("svc"))
    assert rt.workers() == []
    with rt:
        status = {w.name: w for w in rt.workers()}
        assert set(status) == {"dev", "svc"}
        assert status["dev"].role == "device" and status["svc"].role == "service"
        for w in status.values():
            assert w.state is WorkerState.RUNNING and w.pid and w.pid != os.getpid()
            assert w.restarts == 0 and w.started_at is not None and w.incarnation == 1


class Late(Device):
    kind = "late"

    def connect(self) -> None:
        assert self.ctx is not None
        self.ctx.emit(Where(who=self.id, step="connect", pid=os.getpid()))


def test_a_device_attached_after_boot_starts_at_once_in_its_own_process(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("late")
    rt.attach_device(Late(id="late-1"))  # not in the fork server's memory: it travels pickled
    (where,) = rec.wait_for("test.where")
    assert where.payload.to_dict()["pid"] != os.getpid()
    assert rec.of("device.attached")
    with pytest.raises(RegistrationError, match="after boot"):
        rt.register_process(Recorder("too-late"))
    rt.shutdown()
    assert rec.of("device.detached")


class NeverReady(Service):
    name = "neverready"
    start_timeout = 0.2

    def start(self, ctx: Context) -> None:
        threading.Event().wait()  # blocks forever: the start timeout must kill it


def test_a_start_timeout_kills_the_worker_and_boot_goes_on(make_runtime: MakeRuntime) -> None:
    slow = NeverReady()
    slow.restart = False
    rt, rec = make_runtime("neverready", slow)
    (exited,) = rec.of("worker.exited")
    assert exited.payload.to_dict()["reason"] == "start timeout: not ready within 0.2s (killed by SIGKILL)"
    assert rt.workers()[0].state is WorkerState.FAILED
    assert rec.of("service.failure")


class Quitter(Process):
    name = "quitter"

    def start(self, ctx: Context) -> None:
        raise SystemExit("configuration refused")


def test_a_boot_that_fails_midway_leaves_nothing_running() -> None:
    rec = Recorder()
    rt = Runtime(name="midway")
    rt.register_process(rec)
    rt.attach_device(Sensor(id="d"))
    rt.register_process(Quitter())
    with pytest.raises(SystemExit), rt:
        pass
    assert not rt.booted and rt.run_dir is None
    assert rec.names()[-2:] == ["device.detached", "runtime.shutdown"]
    assert "boot failed" in (rec.of("runtime.shutdown")[0].payload.to_dict()["reason"] or "")


class Stuck(Service):
    """Its handle_event never returns, like a driver call that hangs."""

    name = "stuck"
    interval = 3600
    event_timeout = 0.5
    stop_timeout = 0.5
    kill_timeout = 0.5

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            threading.Event().wait()


class Calls(Process):
    """Calls back into the runtime from its handler (status, then shutdown)."""

    name = "calls"

    def __init__(self) -> None:
        self.statuses: list[object] = []

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            assert isinstance(ctx.runtime, Runtime)
            self.statuses.append(ctx.runtime.workers())
            ctx.runtime.shutdown("asked by a handler")


def test_a_handler_may_call_the_runtime_without_deadlock() -> None:
    calls = Calls()
    rt = Runtime(name="reentrant")
    rt.register_process(calls)
    rt.register_service(Echo())
    rt.boot()
    rt.emit(Ping(n=1))  # from the main thread, inside dispatch
    assert rt.wait(timeout=20)
    assert calls.statuses and not rt.booted
    assert rt.halt_reason is None, "a requested shutdown is not a failure"


class StuckOnce(Stuck):
    """Stuck on its first event in its first incarnation only; later ones say when the last event came."""

    name = "stuck-once"

    def __init__(self, marker: Path, last: int) -> None:
        self.marker = str(marker)
        self.last = last

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if not isinstance(evt.payload, Seq):
            return
        if first_incarnation(self.marker):
            threading.Event().wait()
        elif evt.payload.i == self.last:
            ctx.emit(Where(who=self.name, step="last", pid=os.getpid()))


def test_a_service_that_stops_taking_events_is_killed_as_hung_and_emitters_resume(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    n, pad = 100_000, "x" * 1000
    rt, rec = make_runtime("hung", StuckOnce(tmp_path / "stuck", last=n - 1))
    # About 100 MB: far more than the outbox and the pipes to the stuck worker hold, so a
    # bounded runtime can only let this loop go on once the hang is cut.
    for i in range(n):
        rt.emit(Seq(i=i, pad=pad))
    (hung,) = rec.wait_for("worker.hung")
    (exited,) = rec.wait_for("worker.exited")
    # Whichever sees it first: the hub (its queue to the worker stopped moving) or the
    # watchdog (one handle_event past event_timeout).
    reason = exited.payload.to_dict()["reason"]
    assert reason.startswith(("hung: took no events", "hung: handle_event ran longer than")), reason
    assert exited.payload.to_dict()["cause"] == "hung"
    assert hung.payload.to_dict()["incarnation"] == exited.payload.to_dict()["incarnation"] == 1
    # Delivery resumed after the cut: the respawned worker got the emitter's last event.
    (last,) = rec.wait_for("test.where", lambda e: e.payload.to_dict()["step"] == "last", timeout=30)
    assert last.payload.to_dict()["pid"] != exited.payload.to_dict()["pid"]
    rt.shutdown()
    assert len(rec.of("test.seq")) == n


def test_an_injected_clock_stamps_the_parents_events(make_runtime: MakeRuntime) -> None:
    import datetime as dt

    from bussdcc import ManualClock

    clock = ManualClock(start=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    rt, rec = make_runtime("clock", clock=clock)
    clock.advance(90)
    rt.emit(Ping(n=1))
    assert rt.ctx.clock is clock
    rt.shutdown()
    (ping,) = rec.of("test.ping")
    assert ping.time == dt.datetime(2030, 1, 1, 0, 1, 30, tzinfo=dt.UTC)
    assert rec.of("runtime.booting")[0].time == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_a_boot_that_cannot_start_leaves_the_runtime_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUSSDCC_RUN_BASE", str(tmp_path / ("x" * 120)))  # too long for an ipc:// path
    rt = Runtime(name="nobase")
    rt.register_service(Ticker("t"))
    with pytest.raises(BootError, match="too long"):
        rt.boot()
    assert rt.wait(timeout=0) and not rt.booted and rt.run_dir is None


class SlowConnect(Device):
    kind = "slow"

    def connect(self) -> None:
        assert self.ctx is not None
        self.ctx.emit(Where(who=self.id, step="connect", pid=os.getpid()))
        threading.Event().wait(1.0)  # a slow bus scan


def test_shutdown_from_another_thread_during_boot_is_carried_out_by_boot() -> None:
    rec = Recorder()
    rt = Runtime(name="bootstop")
    rt.register_process(rec)
    rt.attach_device(SlowConnect(id="scan"))
    rt.register_service(Ticker("after"))

    def stopper() -> None:
        rec.wait_for("test.where")  # boot is waiting for the device to connect
        rt.shutdown("operator")

    t = threading.Thread(target=stopper)
    t.start()
    rt.boot()  # a requested shutdown ends boot quietly
    t.join()
    assert not rt.booted and rt.wait(timeout=0)
    names = rec.names()
    assert "service.started" not in names and names[-1] == "runtime.shutdown"
    assert rt.halt_reason is None


class RegistersLate(Process):
    name = "registers-late"

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if evt.payload.name == "service.stopped":
            assert isinstance(ctx.runtime, Runtime)
            ctx.runtime.register_service(Ticker("too-late"))


def test_registering_from_a_handler_during_shutdown_is_refused_not_deadlocked() -> None:
    rec = Recorder()
    rt = Runtime(name="latereg")
    rt.register_process(RegistersLate())
    rt.register_process(rec)
    rt.register_service(Ticker("t"))
    rt.boot()
    done = threading.Thread(target=rt.shutdown)
    done.start()
    done.join(timeout=20)
    assert not done.is_alive(), "shutdown finished"
    (err,) = rec.of("process.error")
    assert "shutting down" in err.payload.to_dict()["error"]


class StuckForLong(Stuck):
    name = "stuck-long"
    event_timeout = 600.0  # the hang watchdog will not come to the rescue here


def test_shutdown_never_waits_behind_a_stuck_consumer() -> None:
    rec = Recorder()
    rt = Runtime(name="stuckstop")
    rt.register_process(rec)
    rt.register_service(StuckForLong())
    rt.boot()
    emitted = 0

    def flood() -> None:
        # Without end: whatever the pipes hold, the outbox fills and the emitter waits.
        nonlocal emitted
        while rt.booted:
            rt.emit(Seq(i=emitted, pad="x" * 1000))
            emitted += 1

    emitter = threading.Thread(target=flood, daemon=True)
    try:
        emitter.start()
        wait_until(
            lambda: rt.stats().emitters_waiting, timeout=30, what="the emitter to wait for room in a full outbox"
        )
    finally:
        # The stuck worker would hold a waiting shutdown for event_timeout (600 s): the test's own
        # timeout is what fails it.
        rt.shutdown()
    emitter.join(timeout=30)
    assert not emitter.is_alive(), "a waiting emitter is released by shutdown"
    (exited,) = [e.payload.to_dict() for e in rec.of("worker.exited")]
    assert exited["worker"] == "stuck-long" and exited["signal"] in ("SIGTERM", "SIGKILL"), exited


class SlowReader(Process):
    """Takes a while on the first numbered messages: dispatch falls behind the worker."""

    name = "slowreader"

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq) and evt.payload.i < 300:
            time.sleep(0.005)  # the stimulus: a slow consumer


def test_shutdown_behind_a_slow_handler_keeps_the_lifecycle_order() -> None:
    rec = Recorder()
    rt = Runtime(name="slow-order")
    rt.register_process(SlowReader())
    rt.register_process(rec)
    rt.register_service(Burst())
    rt.boot()
    rec.wait_for("test.seq")  # the burst has begun; most of it is still to be dispatched
    rt.shutdown()
    names = rec.names()
    assert names.count("test.seq") == 5000, "everything the worker sent was dispatched"
    tail = [n for n in names if n != "test.seq"][-6:]
    assert tail == [
        "runtime.shutting_down",
        "worker.exited",
        "service.stopped",
        "process.stopped",
        "process.stopped",
        "runtime.shutdown",
    ], tail

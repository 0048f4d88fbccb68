"""Boot forks workers ahead of their turn, gated: their setup overlaps, their code still runs in boot order.

Each worker's component runs only once every worker before it is ready and announced; one that
dies at its gate is said at its turn; a shutdown while workers wait at their gates ends them all.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from bussdcc import Context, Device, Event, Message, Runtime, Service
from bussdcc.supervisor._assembly import Assembly
from bussdcc.supervisor._supervisor import Supervisor
from bussdcc.supervisor._workers import Incarnation

from ._helpers import MakeRuntime, Recorder, Seq, wait_until

N = 40


class Eager(Service):
    """Emits in start() and in its first tick: the first races its predecessor's announcement, if any races."""

    interval = 3600.0

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self, ctx: Context) -> None:
        ctx.emit(Seq(i=0, pad=self.name))

    def tick(self, ctx: Context) -> None:
        ctx.emit(Seq(i=1, pad=self.name))


class Chatty(Device):
    """Emits as it connects."""

    def connect(self) -> None:
        assert self.ctx is not None
        self.ctx.emit(Seq(i=0, pad=self.id))


class Held(Device):
    """Connects only once the file ``config`` names exists: boot waits on it meanwhile."""

    def connect(self) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(self.config) and time.monotonic() < deadline:
            time.sleep(0.01)


def _about(evt: Event[Message]) -> set[object]:
    fields = evt.payload.to_dict()
    return {fields.get("worker"), fields.get("service"), fields.get("device"), fields.get("pad")}


def _first(events: list[Event[Message]], name: str, who: str, i: int | None = None) -> int:
    """The index of the first ``name`` message about ``who`` (for test.seq: its item ``i``)."""
    for k, evt in enumerate(events):
        if evt.name == name and who in _about(evt) and (i is None or evt.payload.to_dict().get("i") == i):
            return k
    raise AssertionError(f"no {name} for {who}")


def _firsts(events: list[Event[Message]], name: str, field: str) -> list[str]:
    """Who ``name`` is about, in order, each once (its first)."""
    out: list[str] = []
    for evt in events:
        if evt.name == name and (who := evt.payload.to_dict()[field]) not in out:
            out.append(who)
    return out


@pytest.mark.timeout(180)
def test_many_workers_start_in_registration_order_each_after_the_one_before(make_runtime: MakeRuntime) -> None:
    devices = [Chatty(id=f"dev-{k}") for k in range(N)]
    services = [Eager(f"svc-{k}") for k in range(N)]
    _, rec = make_runtime("gated-order", *devices, *services)
    rec.wait_for("test.seq", lambda e: e.payload.to_dict()["i"] == 1, count=N, timeout=120)
    events = list(rec.events)
    assert _firsts(events, "device.attached", "device") == [d.id for d in devices]
    assert _firsts(events, "service.started", "service") == [s.name for s in services]
    order = [d.id for d in devices] + [s.name for s in services]
    booted = next(k for k, evt in enumerate(events) if evt.name == "runtime.booted")
    for before, after in itertools.pairwise(order):
        # The component of `after` ran (its first message) only once `before` was announced.
        assert _first(events, "worker.started", before) < _first(events, "test.seq", after, i=0), (before, after)
    for svc in services:
        assert booted < _first(events, "test.seq", svc.name, i=0), svc.name
    for svc in services:
        ticked = _first(events, "test.seq", svc.name, i=1)
        assert _first(events, "worker.started", svc.name) < ticked, svc.name
        assert _first(events, "service.started", svc.name) < ticked, svc.name


def _parts(rt: Runtime) -> Assembly:
    parts = wait_until(lambda: rt._parts, what="boot under way")
    assert parts is not None
    return parts


def _said_hello(sup: Supervisor, name: str) -> Incarnation | None:
    inc = sup.workers[name].current
    return inc if inc is not None and inc.hello else None


def _boot_aside(rt: Runtime) -> threading.Thread:
    thread = threading.Thread(target=rt.boot, name="test-boot", daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(180)
def test_a_worker_that_dies_at_its_gate_is_said_at_its_turn_and_boot_goes_on(tmp_path: Path) -> None:
    release, gone = tmp_path / "release", tmp_path / "gone"
    gone.mkdir()
    devices: list[Device] = [Held(id="dev-0", config=str(release))]
    devices += [Chatty(id=f"dev-{k}") for k in range(1, 10)]
    devices[3].cwd = str(gone)  # removed below: it dies before its Hello
    devices[3].restart = False
    rec, rt = Recorder(), Runtime(name="gated-crash")
    rt.register_process(rec)
    for dev in devices:
        rt.attach_device(dev)
    for k in range(4):
        rt.register_service(Eager(f"svc-{k}"))
    shutil.rmtree(gone)
    booting = _boot_aside(rt)
    try:
        sup = _parts(rt).supervisor
        # dev-0 holds boot in its connect; dev-6, forked ahead, says hello and waits at its gate.
        gated = wait_until(lambda: _said_hello(sup, "dev-6"), 60, "dev-6 at its gate")
        assert gated is not None and gated.pid is not None
        os.kill(gated.pid, signal.SIGKILL)
        early = wait_until(lambda: sup.workers["dev-3"].current, 60, "dev-3 forked")
        assert early is not None
        wait_until(lambda: gated.exited and early.exited, 60, "both ended")
        assert not [e for e in rec.events if e.name == "worker.exited"], "said only at its turn"
        release.touch()
        booting.join(120)
        assert not booting.is_alive() and rt.booted
        rec.wait_for("device.attached", lambda e: e.payload.to_dict()["device"] == "dev-6", timeout=60)
        events = list(rec.events)
    finally:
        release.touch()
        rt.shutdown()
        booting.join(60)
    attached = [d for d in _firsts(events, "device.attached", "device") if d != "dev-6"]
    assert attached == [f"dev-{k}" for k in range(10) if k not in (3, 6)]
    for k in (3, 6):
        exited = _first(events, "worker.exited", f"dev-{k}")
        assert (
            _first(events, "device.attached", f"dev-{k - 1}")
            < exited
            < _first(events, "device.attached", f"dev-{k + 1}")
        )
    assert _first(events, "device.failed", "dev-3") < _first(events, "device.attached", "dev-4")
    assert _firsts(events, "service.started", "service") == [f"svc-{k}" for k in range(4)]


@pytest.mark.timeout(180)
def test_shutdown_while_workers_wait_at_their_gates_ends_them_all(tmp_path: Path) -> None:
    release = tmp_path / "release"
    held = Held(id="dev-0", config=str(release))
    held.start_timeout = 60.0
    rec, rt = Recorder(), Runtime(name="gated-halt")
    rt.register_process(rec)
    rt.attach_device(held)
    for k in range(1, 8):
        rt.attach_device(Chatty(id=f"dev-{k}"))
    for k in range(8):
        rt.register_service(Eager(f"svc-{k}"))
    booting = _boot_aside(rt)
    try:
        parts = _parts(rt)
        sup = parts.supervisor
        others = [name for name in sup.workers if name != "dev-0"]
        wait_until(lambda: all(_said_hello(sup, n) for n in others), 60, "every other worker at its gate")
        pids = [pid for w in rt.workers() if (pid := w.pid) is not None]
        fork_server = parts.fork.pid
        assert len(pids) == 16
        rt.request_shutdown("stop at the gates")
        release.touch()  # dev-0 may finish connecting: boot sees the shutdown at its next step
        booting.join(120)
        assert not booting.is_alive()
        assert rt.wait(60)
    finally:
        release.touch()
        rt.shutdown()
        booting.join(60)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(lambda: all(gone(pid) for pid in [*pids, fork_server]), 30, "every process gone")
    names = [e.name for e in rec.events if _about(e) & set(others)]
    assert names == [], "nothing is said of workers that never ran"
    assert rec.events[-1].name == "runtime.shutdown"


@pytest.mark.timeout(180)
def test_a_group_member_that_dies_at_its_gate_restarts_its_group_without_holding_boot_up(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    members: list[Device] = [Chatty(id=f"g{k}") for k in range(3)]
    members[1].cwd = str(gone)  # removed below: it dies before its Hello, each time
    members[1].backoff_initial = 0.05
    members[1].max_restarts = 2
    rt, rec = make_runtime("gated-group", boot=False)
    rt.register_group("grp", members, strategy="one_for_all")
    for k in range(5):
        rt.attach_device(Chatty(id=f"d{k}"))
    shutil.rmtree(gone)
    rt.boot()
    rec.wait_for("worker.gave_up", lambda e: e.payload.to_dict()["worker"] == "g0", timeout=60)
    events = list(rec.events)
    assert [d for d in _firsts(events, "device.attached", "device") if d.startswith("d")] == [f"d{k}" for k in range(5)]
    # g1 is said to have failed at its turn: after g0 attached, before the next in order.
    failed = _first(events, "device.failed", "g1")
    assert _first(events, "device.attached", "g0") < failed < _first(events, "device.attached", "d0")
    assert {w.name: w.state for w in rt.workers()}["g1"] == "failed"

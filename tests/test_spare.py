"""Hot spares: a worker with ``spare = True`` respawns from a process forked ahead and waiting at its gate.

The spare runs no component code before its Go; a respawn releases it and it is announced as any
respawned incarnation; in every other case it ends without a word and without a process left behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from bussdcc import Context, Device, Event, Message, Runtime, Service
from bussdcc.errors import ConfigError, RegistrationError
from bussdcc.supervisor._supervisor import Supervisor
from bussdcc.supervisor._workers import Incarnation

from ._helpers import MakeRuntime, Recorder, System, pids, wait_until


class Counted(Service):
    """Writes its pid to a file in start(): one line per incarnation whose code ran."""

    interval = 3600.0
    max_restarts = 100
    backoff_initial = 0.0

    def __init__(self, name: str, log: Path, *, spare: bool = True) -> None:
        self.name = name
        self.log = str(log)
        self.spare = spare

    def start(self, ctx: Context) -> None:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")


class CountedDevice(Device):
    """Writes its pid to the file ``config`` names in connect()."""

    spare = True
    max_restarts = 100
    backoff_initial = 0.0

    def connect(self) -> None:
        with open(self.config, "a") as f:
            f.write(f"{os.getpid()}\n")


def _sup(rt: Runtime) -> Supervisor:
    parts = rt._parts
    assert parts is not None
    return parts.supervisor


def _waiting(rt: Runtime, name: str, number: int, *, not_: Incarnation | None = None) -> Incarnation:
    """The spare of ``name`` numbered ``number`` (other than ``not_``), once it said hello (it waits at its gate)."""
    sup = _sup(rt)

    def spare() -> Incarnation | None:
        inc = sup.workers[name].spare
        if inc is None or inc is not_ or inc.number != number or not inc.hello or inc.pid is None:
            return None
        return inc

    found = wait_until(spare, 30, f"the spare {number} of {name} at its gate")
    assert found is not None
    return found


def _started(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _about(rec: Recorder, name: str) -> list[Event[Message]]:
    out = []
    for evt in list(rec.events):
        fields = evt.payload.to_dict()
        if name in (fields.get("worker"), fields.get("service"), fields.get("device")):
            out.append(evt)
    return out


def _story(rec: Recorder, name: str) -> list[tuple[str, object]]:
    """What was said about ``name``: message names, with the incarnation where there is one."""
    return [(e.name, e.payload.to_dict().get("incarnation")) for e in _about(rec, name)]


def _started_as(rec: Recorder, name: str, incarnation: int) -> int:
    """The pid of ``name``'s incarnation ``incarnation`` as ``worker.started`` said it."""
    evt = rec.wait_for(
        "worker.started",
        lambda e: e.payload.to_dict()["worker"] == name and e.payload.to_dict()["incarnation"] == incarnation,
        timeout=30,
    )[0]
    pid = evt.payload.to_dict()["pid"]
    assert isinstance(pid, int)
    return pid


@pytest.mark.timeout(90)
def test_a_crash_brings_back_the_spare_announced_as_any_respawn(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot", tmp_path / "cold"
    rt, rec = make_runtime("spare-crash", Counted("hot", hot), Counted("cold", cold, spare=False))
    first = _started_as(rec, "hot", 1)
    cold_first = _started_as(rec, "cold", 1)
    spare = _waiting(rt, "hot", 2)
    assert spare.pid != first
    assert _started(hot) == [first], "the spare ran no code of its own"
    assert _sup(rt).workers["cold"].spare is None

    os.kill(first, signal.SIGKILL)
    os.kill(cold_first, signal.SIGKILL)
    assert _started_as(rec, "hot", 2) == spare.pid, "the process that waited is the one that runs"
    _started_as(rec, "cold", 2)
    rec.wait_for("service.started", lambda e: e.payload.to_dict()["service"] == "hot", count=2, timeout=30)
    rec.wait_for("service.started", lambda e: e.payload.to_dict()["service"] == "cold", count=2, timeout=30)
    assert pids(rt)["hot"] == spare.pid
    assert rt.worker("hot").incarnation == 2

    # The next spare waits, and still nothing of a spare ran.
    after = _waiting(rt, "hot", 3)
    assert _started(hot) == [first, spare.pid]
    # Said exactly as a respawn of a worker without a spare is.
    assert _story(rec, "hot") == _story(rec, "cold")
    assert _story(rec, "hot") == [
        ("worker.started", 1),
        ("service.started", None),
        ("worker.exited", 1),
        ("service.error", None),
        ("worker.backoff", None),
        ("service.restart", None),
        ("worker.started", 2),
        ("service.started", None),
    ]
    assert not [e for e in rec.events if e.payload.to_dict().get("pid") == after.pid]
    assert rt.stats().lost == 0


@pytest.mark.timeout(90)
def test_a_device_respawns_from_its_spare_which_never_connects_before_its_go(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    log = tmp_path / "connects"
    rt, rec = make_runtime("spare-device", CountedDevice(id="dev", config=str(log)))
    first = _started_as(rec, "dev", 1)
    spare = _waiting(rt, "dev", 2)
    assert _started(log) == [first]
    os.kill(first, signal.SIGKILL)
    assert _started_as(rec, "dev", 2) == spare.pid
    rec.wait_for("device.attached", count=2, timeout=30)
    _waiting(rt, "dev", 3)
    assert _started(log) == [first, spare.pid]
    assert [n for n, _ in _story(rec, "dev")] == [
        "worker.started",
        "device.attached",
        "worker.exited",
        "device.failed",
        "worker.backoff",
        "worker.started",
        "device.attached",
    ]


@pytest.mark.timeout(90)
def test_a_respawn_after_a_backoff_delay_releases_the_spare_too(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    log = tmp_path / "starts"
    svc = Counted("hot", log)
    svc.backoff_initial = 0.2  # the second failure in a row waits
    rt, rec = make_runtime("spare-backoff", svc)
    pid = _started_as(rec, "hot", 1)
    for number in (2, 3):
        spare = _waiting(rt, "hot", number)
        os.kill(pid, signal.SIGKILL)
        pid = _started_as(rec, "hot", number)
        assert pid == spare.pid
    delays = [e.payload.to_dict()["delay"] for e in rec.of("worker.backoff")]
    assert len(delays) == 2 and delays[1] > 0, delays
    _waiting(rt, "hot", 4)
    assert len(_started(log)) == 3


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["temporary", "max_restarts"])
def test_a_policy_that_does_not_restart_ends_the_spare_unsaid(
    make_runtime: MakeRuntime, tmp_path: Path, policy: str
) -> None:
    log = tmp_path / "starts"
    svc = Counted("hot", log)
    if policy == "temporary":
        svc.restart = "temporary"
    else:
        svc.max_restarts = 0
    rt, rec = make_runtime("spare-giveup", svc)
    first = _started_as(rec, "hot", 1)
    spare = _waiting(rt, "hot", 2)
    assert spare.pid is not None
    os.kill(first, signal.SIGKILL)
    rec.wait_for("worker.gave_up", timeout=30)
    wait_until(lambda: _gone(first) and spare.pid is not None and _gone(spare.pid), 30, "both processes gone")
    wait_until(lambda: spare.finalized, 30, "the spare's books closed")
    assert _sup(rt).workers["hot"].spare is None
    assert rt.worker("hot").state == "failed"
    assert rt.worker("hot").incarnation == 1
    assert [n for n, i in _story(rec, "hot") if i == 2] == []
    assert not [e for e in rec.events if e.payload.to_dict().get("pid") == spare.pid]
    assert _started(log) == [first]


@pytest.mark.timeout(90)
def test_stopping_the_worker_and_shutting_down_leave_no_process_behind(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    rt, rec = make_runtime("spare-stop", Counted("a", tmp_path / "a"), Counted("b", tmp_path / "b"))
    a_pid, b_pid = _started_as(rec, "a", 1), _started_as(rec, "b", 1)
    a_spare, b_spare = _waiting(rt, "a", 2), _waiting(rt, "b", 2)
    assert a_spare.pid is not None and b_spare.pid is not None
    rt.stop_worker("a")
    wait_until(lambda: _gone(a_pid) and a_spare.pid is not None and _gone(a_spare.pid), 30, "a and its spare gone")
    assert rt.worker("a").state == "stopped"
    rt.remove_worker("a")
    fork_server = rt.stats().fork_server_pid
    assert fork_server is not None
    rt.shutdown()
    assert wait_until(lambda: all(_gone(p) for p in (b_pid, b_spare.pid or 0, fork_server)), 30, "every process gone")
    spares = {a_spare.pid, b_spare.pid}
    assert not [e for e in rec.events if e.payload.to_dict().get("pid") in spares]
    assert [i for _, i in _story(rec, "a") if i is not None] == [1, 1]  # started, exited: no word of the spare
    assert [i for _, i in _story(rec, "b") if i is not None] == [1, 1]
    assert _started(tmp_path / "a") == [a_pid]
    assert _started(tmp_path / "b") == [b_pid]


@pytest.mark.timeout(90)
def test_a_spare_killed_while_waiting_is_replaced_and_the_worker_still_respawns_from_one(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    log = tmp_path / "starts"
    rt, rec = make_runtime("spare-lost", Counted("hot", log))
    first = _started_as(rec, "hot", 1)
    lost = _waiting(rt, "hot", 2)
    assert lost.pid is not None
    os.kill(lost.pid, signal.SIGKILL)
    again = _waiting(rt, "hot", 2, not_=lost)
    assert again.pid != lost.pid
    assert _story(rec, "hot") == [("worker.started", 1), ("service.started", None)], "a spare's end is not said"
    os.kill(first, signal.SIGKILL)
    assert _started_as(rec, "hot", 2) == again.pid
    assert _started(log) == [first, again.pid]
    assert not [e for e in rec.events if e.payload.to_dict().get("pid") == lost.pid]


@pytest.mark.timeout(90)
def test_a_spare_that_cannot_live_is_replaced_once_per_ready_incarnation(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    rt, rec = make_runtime("spare-loop", Counted("hot", tmp_path / "starts"))
    _started_as(rec, "hot", 1)
    sup = _sup(rt)
    worker = sup.workers["hot"]
    lost: Incarnation | None = None
    for _ in range(2):
        lost = _waiting(rt, "hot", 2, not_=lost)
        assert lost.pid is not None
        os.kill(lost.pid, signal.SIGKILL)
    wait_until(lambda: worker.spare is None, 30, "the second lost spare let go, and no third")
    assert worker.spares_left == 0
    assert rt.worker("hot").state == "running"


def test_spare_must_be_a_bool(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    rt, _ = make_runtime("spare-check", boot=False)
    svc = Counted("hot", tmp_path / "starts")
    svc.spare = "yes"  # type: ignore[assignment]
    with pytest.raises(RegistrationError, match="spare must be true or false"):
        rt.add_worker(svc)


@pytest.mark.timeout(90)
def test_a_system_file_may_keep_a_spare(system: Callable[[str], System]) -> None:
    rt, _, _ = system('[[services]]\nname = "hot"\nclass = "tests.decl_parts:Reporter"\nspare = true\n')
    spare = _waiting(rt, "hot", 2)
    assert rt.component("hot").spare is True
    assert spare.pid is not None and not _gone(spare.pid)


def test_a_system_file_with_a_spare_that_is_no_bool_is_refused(tmp_path: Path) -> None:
    from bussdcc.cli._config import load_system

    path = tmp_path / "system.toml"
    path.write_text('[[services]]\nname = "hot"\nclass = "tests.decl_parts:Reporter"\nspare = "yes"\n')
    with pytest.raises((ConfigError, RegistrationError), match="spare"):
        load_system(path)


@pytest.mark.timeout(90)
def test_a_group_restart_releases_the_failed_members_spare_and_ends_the_held_ones(tmp_path: Path) -> None:
    rec, rt = Recorder(), Runtime(name="spare-group")
    rt.register_process(rec)
    rt.register_group("pair", [Counted("a", tmp_path / "a"), Counted("b", tmp_path / "b")], strategy="one_for_all")
    with rt:
        a_pid, b_pid = _started_as(rec, "a", 1), _started_as(rec, "b", 1)
        a_spare, b_spare = _waiting(rt, "a", 2), _waiting(rt, "b", 2)
        assert b_spare.pid is not None
        os.kill(a_pid, signal.SIGKILL)
        assert _started_as(rec, "a", 2) == a_spare.pid
        b_again = _started_as(rec, "b", 2)
        assert b_again != b_spare.pid, "held by its group, b stopped: its spare was ended, not released"
        wait_until(lambda: b_spare.pid is not None and _gone(b_pid) and _gone(b_spare.pid), 30, "b's processes gone")
        _waiting(rt, "a", 3)
        _waiting(rt, "b", 3)
        assert _started(tmp_path / "a") == [a_pid, a_spare.pid]
        assert _started(tmp_path / "b") == [b_pid, b_again]
        assert not [e for e in rec.events if e.payload.to_dict().get("pid") == b_spare.pid]


@pytest.mark.timeout(90)
def test_a_reload_that_replaces_the_worker_ends_its_spare(system: Callable[[str], System]) -> None:
    entry = '[[services]]\nname = "hot"\nclass = "tests.decl_parts:Reporter"\nspare = true\n'
    rt, rec, path = system(entry)
    old = _waiting(rt, "hot", 2)
    assert old.pid is not None
    path.write_text(entry + "start_timeout = 9.0\n")
    rt.reload()
    assert rt.component("hot").start_timeout == 9.0
    new = wait_until(lambda: (s := _sup(rt).workers["hot"].spare) is not None and s.hello and s, 30, "a new spare")
    assert new is not old
    wait_until(lambda: old.pid is not None and _gone(old.pid), 30, "the old spare gone")
    assert not [e for e in rec.events if e.payload.to_dict().get("pid") == old.pid]

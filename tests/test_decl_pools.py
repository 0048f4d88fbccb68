"""Pools: ``instances = N`` makes NAME-0 .. NAME-(N-1), each a worker of its own; ``scale`` changes N live."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bussdcc import Runtime, WorkerState
from bussdcc.errors import RegistrationError, RuntimeStateError

from ._cli import Background, bussdcc
from ._helpers import Recorder
from .decl_parts import service

MakeRuntime = Callable[..., tuple[Runtime, Recorder]]


def _members(rt: Runtime, pool: str) -> dict[str, int | None]:
    return {w.name: w.pid for w in rt.workers() if w.name.rsplit("-", 1)[0] == pool}


def test_a_pool_scales_up_and_down_at_runtime(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("pool-scale", service("solo"))
    rt.add_pool("crawl", lambda name: service(name, max_restarts=7), 2)
    first = _members(rt, "crawl")
    assert list(first) == ["crawl-0", "crawl-1"]
    assert all(pid is not None for pid in first.values()) and len(set(first.values())) == 2
    statuses = rt.scale("crawl", 4)
    assert [s.name for s in statuses] == ["crawl-0", "crawl-1", "crawl-2", "crawl-3"]
    assert all(s.state is WorkerState.RUNNING for s in statuses)
    pids = [s.pid for s in statuses]
    assert len(set(pids)) == 4 and pids[:2] == list(first.values())  # the first two were left alone
    assert rt.component("crawl-3").max_restarts == 7  # each with the pool's policy
    statuses = rt.scale("crawl", 1)
    assert [s.name for s in statuses] == ["crawl-0"] and statuses[0].pid == first["crawl-0"]
    assert set(_members(rt, "crawl")) == {"crawl-0"}
    # The highest-numbered went first.
    gone = [e.payload.service for e in rec.of("service.stopped")]  # type: ignore[attr-defined]
    assert gone == ["crawl-3", "crawl-2", "crawl-1"]
    assert rt.pools() == {"crawl": 1}
    assert rt.scale("crawl", 0) == [] and rt.pools() == {"crawl": 0}
    assert [s.name for s in rt.scale("crawl", 1)] == ["crawl-0"]


def test_pool_members_have_a_pid_and_restart_on_their_own(make_runtime: MakeRuntime) -> None:
    import os
    import signal

    rt, rec = make_runtime("pool-own", boot=False)
    rt.add_pool("w", service, 3)
    rt.boot()
    before = _members(rt, "w")
    pid = before["w-1"]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    rec.wait_for("worker.started", lambda e: e.payload.worker == "w-1", count=2, timeout=60)  # type: ignore[attr-defined]
    after = _members(rt, "w")
    assert after["w-0"] == before["w-0"] and after["w-2"] == before["w-2"]
    assert after["w-1"] not in (None, pid)


def test_pool_mistakes_are_refused(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("pool-bad", service("taken"))
    with pytest.raises(RegistrationError, match="no pool named 'nope'"):
        rt.scale("nope", 2)
    with pytest.raises(RegistrationError, match="registered already"):
        rt.add_pool("taken", service, 1)
    rt.add_pool("p", service, 1)
    with pytest.raises(RegistrationError, match="instances must be an int >= 0"):
        rt.scale("p", -1)
    with pytest.raises(RuntimeStateError, match="member of the pool 'p': scale the pool"):
        rt.remove_worker("p-0")


def test_a_worker_after_a_pool_starts_after_every_member(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("pool-after", boot=False)
    rt.add_worker(service("audit", after=["crawl"]))
    rt.add_pool("crawl", service, 2)
    rt.boot()
    assert [e.payload.worker for e in rec.of("worker.started")] == ["crawl-0", "crawl-1", "audit"]  # type: ignore[attr-defined]


SYSTEM = """
[runtime]
name = "{name}"

[[services]]
class = "tests.decl_parts:Reporter"
name = "crawler"
instances = 2
restart = "transient"
"""


def _status(name: str) -> dict[str, dict[str, object]]:
    done = bussdcc("status", name, "--json")
    assert done.returncode == 0, done.stderr
    return {w["name"]: w for w in json.loads(done.stdout)["workers"]}


@pytest.mark.timeout(120)
def test_bussdcc_scale_changes_a_pool_of_a_running_system(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(SYSTEM.format(name="pool-cli"))
    run = Background(["run", str(path)])
    try:
        run.wait_line("running", err=True, timeout=60)
        first = _status("pool-cli")
        assert sorted(first) == ["crawler-0", "crawler-1"]
        done = bussdcc("scale", "crawler", "3", "-r", "pool-cli")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("crawler: 3 instances; started crawler-2 (pid ")
        now = _status("pool-cli")
        assert sorted(now) == ["crawler-0", "crawler-1", "crawler-2"]
        assert {now[n]["pid"] for n in first} == {first[n]["pid"] for n in first}
        assert now["crawler-2"]["state"] == "running" and now["crawler-2"]["pid"] not in {
            w["pid"] for w in first.values()
        }
        done = bussdcc("scale", "crawler", "1", "-r", "pool-cli")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "crawler: 1 instance; removed crawler-1, crawler-2"
        assert sorted(_status("pool-cli")) == ["crawler-0"]
        done = bussdcc("scale", "ghost", "1", "-r", "pool-cli")
        assert done.returncode != 0 and "no pool named 'ghost'" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        assert run.stop() == 0


def test_spawn_refuses_process_settings_it_cannot_apply(tmp_path: Path) -> None:
    path = tmp_path / "pool.toml"
    path.write_text(SYSTEM.format(name="pool-spawn"))
    run = Background(["run", str(path)])
    try:
        run.wait_line("running", err=True, timeout=60)
        done = bussdcc("spawn", "tests.decl_parts:Reporter", "--name", "x", "--set", "cwd=/tmp", "-r", "pool-spawn")
        assert done.returncode == 1
        assert "cwd: only for workers the fork server starts" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        assert run.stop() == 0

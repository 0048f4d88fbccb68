"""Dependencies between workers: ``after`` orders start and stop, ``requires`` binds a worker to another."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bussdcc import Runtime, WorkerState
from bussdcc.cli._config import install, load_system
from bussdcc.errors import RegistrationError
from bussdcc.supervisor._deps import DependencyError, dependents, start_order

from ._helpers import Recorder
from .decl_parts import device, service

MakeRuntime = Callable[..., tuple[Runtime, Recorder]]


def _started(rec: Recorder) -> list[str]:
    return [e.payload.worker for e in rec.of("worker.started")]  # type: ignore[attr-defined]


def _stopped(rec: Recorder) -> list[str]:
    out = []
    for e in rec.events:
        if e.payload.name == "service.stopped":
            out.append(e.payload.service)  # type: ignore[attr-defined]
        elif e.payload.name == "device.detached":
            out.append(e.payload.device)  # type: ignore[attr-defined]
    return out


def test_start_follows_dependencies_within_the_role_order_and_stop_is_the_reverse(make_runtime: MakeRuntime) -> None:
    workers = [
        service("a", after=["b"]),
        service("b", requires=["c", "d1"]),
        service("c"),
        service("e"),
        device("d1", after=["d2"]),
        device("d2"),
    ]
    rt, rec = make_runtime("deps-order", *workers)
    # Devices first (d2 before d1, which follows it), then services: c, then b (after c), then a; e
    # keeps its place among those free to start.
    assert _started(rec) == ["d2", "d1", "c", "b", "a", "e"]
    rt.shutdown()
    assert _stopped(rec) == ["e", "a", "b", "c", "d1", "d2"]


def test_start_order_is_a_pure_function() -> None:
    workers = {n: service(n, after=deps) for n, deps in [("x", ["y"]), ("y", []), ("z", ["pool"])]}
    workers.update({"pool-0": service("pool-0"), "pool-1": service("pool-1")})
    assert start_order(workers, {"pool": ["pool-0", "pool-1"]}) == ["y", "x", "pool-0", "pool-1", "z"]
    assert start_order(workers, {"pool": ["pool-0", "pool-1"]}, [["pool-1", "pool-0"]])[2:4] == ["pool-1", "pool-0"]


@pytest.mark.parametrize(
    ("workers", "error"),
    [
        ([service("a", after=["b"]), service("b", requires=["a"])], "'a': dependency cycle a -> b -> a"),
        ([service("a", after=["a2"]), service("a2", after=["a3"]), service("a3", after=["a"])], "dependency cycle"),
        ([service("a", after=["nobody"])], "'a': after names 'nobody', which is no registered worker or pool"),
        ([service("s"), device("d", requires=["s"])], "'d': requires names the service 's', but devices start before"),
    ],
)
def test_a_cycle_an_unknown_name_or_a_device_after_a_service_refuses_boot(
    make_runtime: MakeRuntime, workers: list[Any], error: str
) -> None:
    rt, rec = make_runtime("deps-bad", *workers, boot=False)
    with pytest.raises(DependencyError) as info:
        rt.boot()
    assert error in str(info.value)
    assert not rt.booted and rt.run_dir is None
    assert rec.of("worker.started") == []


def test_a_worker_added_after_boot_must_name_known_workers(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("deps-late", service("base"))
    with pytest.raises(RegistrationError, match="after names 'ghost'"):
        rt.add_worker(service("late", after=["ghost"]))
    rt.add_worker(service("late", requires=["base"]))
    assert rt.worker("late").state is WorkerState.RUNNING
    assert dependents({"base": service("base"), "late": service("late", requires=["base"])}, "base") == ["late"]


def test_a_bad_dependency_setting_is_refused_at_registration(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("deps-setting", boot=False)
    with pytest.raises(RegistrationError, match="after must be a list of worker names"):
        rt.add_worker(service("x", after="y"))
    with pytest.raises(RegistrationError, match="requires names the worker itself"):
        rt.add_worker(service("x", requires=["x"]))


def test_requires_restarts_the_dependent_when_its_dependency_dies(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime(
        "deps-bind",
        service("db"),
        service("app", requires=["db"]),
        service("web", requires=["app"]),
        service("other", after=["db"]),
    )
    before = {w.name: w.pid for w in rt.workers()}
    assert before["db"] is not None
    os.kill(before["db"], signal.SIGKILL)
    # db comes back, then app (which requires it), then web (which requires app); other only followed db.
    for name in ("db", "app", "web"):
        rec.wait_for("worker.started", lambda e, n=name: e.payload.worker == n, count=2, timeout=60)  # type: ignore[misc]
    for name in ("app", "web"):
        status = rt.wait_for_worker(name, WorkerState.RUNNING, timeout=60)
        assert status.pid != before[name] and status.incarnation == 2 and status.restarts == 1
    restarted = [n for n in _started(rec)[4:]]
    assert restarted == ["db", "app", "web"]
    assert rt.worker("other").pid == before["other"] and rt.worker("other").incarnation == 1
    # Stopped for the restart, in the reverse order, before db came back.
    exits = [e.payload.worker for e in rec.of("worker.exited")]  # type: ignore[attr-defined]
    assert exits == ["db", "web", "app"]


def test_restarting_or_stopping_a_required_worker_takes_its_dependents_along(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("deps-manual", device("bus"), service("reader", requires=["bus"]), service("free"))
    first = {w.name: w.pid for w in rt.workers()}
    rt.restart_worker("bus")
    reader = rt.worker("reader")
    assert reader.state is WorkerState.RUNNING and reader.pid != first["reader"]
    assert rt.worker("free").pid == first["free"]
    assert _started(rec)[-2:] == ["bus", "reader"]
    rt.stop_worker("bus")
    assert rt.worker("reader").state is WorkerState.STOPPED
    assert rt.worker("bus").state is WorkerState.STOPPED
    assert _stopped(rec)[-2:] == ["reader", "bus"]


def test_a_dependent_whose_requirement_is_down_at_boot_stays_stopped(make_runtime: MakeRuntime) -> None:
    off = service("off", enabled=False)
    rt, rec = make_runtime("deps-down", off, service("needs", requires=["off"]), service("follows", after=["off"]))
    assert rt.worker("needs").state is WorkerState.STOPPED
    assert rt.worker("follows").state is WorkerState.RUNNING
    assert _started(rec) == ["follows"]


def test_when_a_required_worker_gives_up_its_dependents_fail_with_it(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime(
        "deps-giveup", service("db", max_restarts=0), service("app", requires=["db"]), service("side", after=["db"])
    )
    pid = rt.worker("db").pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    rt.wait_for_worker("db", WorkerState.FAILED, timeout=60)
    app = rt.wait_for_worker("app", WorkerState.FAILED, timeout=60)
    assert app.last_exit == "gave up: 'db', which it requires, gave up"
    assert rt.worker("side").state is WorkerState.RUNNING
    gave_up = [e.payload.worker for e in rec.wait_for("worker.gave_up", count=2, timeout=30)]  # type: ignore[attr-defined]
    assert gave_up == ["db", "app"]


def test_a_system_file_starts_in_dependency_order_and_stops_in_reverse(tmp_path: Path) -> None:
    reporter = 'class = "tests.decl_parts:Reporter"'
    path = tmp_path / "deps.toml"
    path.write_text(
        '[runtime]\nname = "deps-file"\n\n'
        f'[[services]]\nname = "web"\n{reporter}\nrequires = ["api"]\n\n'
        f'[[services]]\nname = "api"\n{reporter}\nafter = ["pool", "bus"]\n\n'
        f'[[services]]\nname = "pool"\n{reporter}\ninstances = 2\n\n'
        f'[[services]]\nname = "g2"\n{reporter}\n\n[[services]]\nname = "g1"\n{reporter}\n\n'
        '[[groups]]\nname = "g"\nmembers = ["g1", "g2"]\n\n'
        '[[devices]]\nid = "bus"\nclass = "tests.decl_parts:Link"\n'
    )
    spec = load_system(path)
    rt = Runtime(name=spec.name)
    rec = Recorder()
    rt.register_process(rec)
    install(spec, rt)
    rt.boot()
    try:
        assert _started(rec) == ["bus", "pool-0", "pool-1", "api", "web", "g1", "g2"]
    finally:
        rt.shutdown()
    assert _stopped(rec) == ["g2", "g1", "web", "api", "pool-1", "pool-0", "bus"]

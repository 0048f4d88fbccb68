"""Smaller fixes: replay imports nothing a recording names, worker_up, numeric ids, odd names, ..."""

from __future__ import annotations

import logging
import os
import pwd
import sys
from pathlib import Path

import pytest

from bussdcc import Runtime, ThreadedRuntime, WorkerState
from bussdcc.errors import ConfigError, RegistrationError

from ._cli import bussdcc
from ._helpers import Echo, MakeRuntime, Recorder
from ._recordings import McapRecorder
from .cli_parts import Probe


def test_replay_never_imports_a_module_the_recording_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "polish_planted.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from dataclasses import dataclass\n"
        "from bussdcc import Message\n"
        "@dataclass(slots=True, frozen=True)\n"
        "class Planted(Message):\n"
        "    name = 'polish.planted'\n"
        "    x: int = 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "planted.mcap"
    rec = McapRecorder(path)
    for _ in range(2):
        rec.raw("polish.planted", b'{"x": 1}', class_path="polish_planted:Planted")
    rec.close()
    rt = Runtime(name="replay-planted")
    recorder = Recorder()
    rt.register_process(recorder)
    with caplog.at_level(logging.WARNING, logger="bussdcc.replay"):
        report = rt.replay(path, speed=None)
    assert not marker.exists() and "polish_planted" not in sys.modules
    assert report.unreadable == {"polish.planted": 2}
    assert not recorder.of("polish.planted")
    (warned,) = [r.getMessage() for r in caplog.records if r.name == "bussdcc.replay"]
    assert "polish_planted:Planted" in warned and "import" in warned


def test_worker_up_is_1_while_the_process_is_up_even_unhealthy(make_runtime: MakeRuntime) -> None:
    from .test_health import Flow
    from .test_http_metrics import samples, scrape

    svc = Flow("sulking")  # no gate: it never emits what it is expected to
    svc.expect = {"test.health.reading": 0.5}
    svc.on_unhealthy = "report"
    rt, _ = make_runtime("polish-up", svc, http="127.0.0.1:0")
    rt.wait_for_worker("sulking", WorkerState.UNHEALTHY)
    got = samples(scrape(rt))
    labels = (("role", "service"), ("worker", "sulking"))
    assert got["bussdcc_worker_state", (*labels[:1], ("state", "unhealthy"), *labels[1:])] == 1.0
    assert got["bussdcc_worker_up", labels] == 1.0


REPORTER = 'class = "tests.decl_parts:Reporter"'
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="user/group need a runtime running as root (as on CI)")


@ROOT_ONLY
def test_user_and_group_may_be_numbers_in_the_file_and_from_python(tmp_path: Path) -> None:
    from bussdcc.cli._config import load_system
    from bussdcc.supervisor._procenv import check_process

    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "sys.toml"
    path.write_text(
        f'[[services]]\nname = "a"\n{REPORTER}\nuser = {nobody.pw_uid}\n\n'
        f'[[services]]\nname = "b"\n{REPORTER}\ngroup = {nobody.pw_gid}\n'
    )
    spec = load_system(path)
    a, b = spec.components["services"]
    ids_a, ids_b = vars(a)["_bussdcc_ids"], vars(b)["_bussdcc_ids"]
    assert (ids_a.uid, ids_a.user) == (nobody.pw_uid, "nobody")
    assert (ids_b.uid, ids_b.gid) == (None, nobody.pw_gid)
    svc = Echo()
    svc.user, svc.group = nobody.pw_uid, nobody.pw_gid
    check_process(svc)
    for value, why in (
        ("-1", "user must be None, a name or an id >= 0, not -1"),
        ("true", "user must be None, a name or an id >= 0, not True"),
        ("4000000000", "user 4000000000 does not exist"),
        ("4000000001000", "user 4000000001000 does not exist"),
    ):
        path.write_text(f'[[services]]\nname = "a"\n{REPORTER}\nuser = {value}\n')
        with pytest.raises(ConfigError) as info:
            load_system(path)
        assert str(info.value) == f"{path}:4: services[0].user: {why}"
    path.write_text(f'[[services]]\nname = "a"\n{REPORTER}\ngroup = 4000000000\n')
    with pytest.raises(ConfigError, match=r"^\S+:4: services\[0\]\.group: group 4000000000 does not exist$"):
        load_system(path)


@pytest.mark.parametrize("bad", ["a\0b", "a\nb", "tab\there", "bell\x07", "del\x7f", "nl-\u2028"])
def test_names_with_control_characters_are_refused_at_registration(bad: str) -> None:
    rt = Runtime(name="polish-names")
    svc = Echo()
    svc.name = bad
    with pytest.raises(RegistrationError) as info:
        rt.register_service(svc)
    assert "\n" not in str(info.value) and "control character" in str(info.value)
    recorder = Recorder()
    recorder.name = bad
    with pytest.raises(RegistrationError, match="control character"):
        rt.register_process(recorder)
    with pytest.raises(RegistrationError, match="control character"):
        rt.attach_device(Probe(id=bad))
    assert not rt.workers()


def test_names_with_control_characters_are_refused_in_the_file(tmp_path: Path) -> None:
    from bussdcc.cli._config import load_system

    path = tmp_path / "sys.toml"
    for section, cls in (("services", REPORTER), ("processes", 'class = "tests._helpers:Recorder"')):
        path.write_text(f'[[{section}]]\nname = "a\\nb"\n{cls}\n')
        with pytest.raises(ConfigError) as info:
            load_system(path)
        message = str(info.value)
        assert message.startswith(f"{path}:2: {section}[0].name: ") and "control character" in message, message
        assert "\n" not in message


def test_spawn_refuses_a_name_with_control_characters() -> None:
    rt = ThreadedRuntime(name="polish-spawn")
    rt.start(timeout=30)
    try:
        done = bussdcc("spawn", "tests.cli_parts:Beeper", "--name", "bad\x01name", "-r", "polish-spawn")
        assert done.returncode == 1
        assert "control character" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not rt.workers()
    finally:
        rt.stop(timeout=30)


def test_group_names_with_control_characters_are_refused() -> None:
    rt = Runtime(name="polish-group")
    echo = Echo()
    rt.register_service(echo)
    with pytest.raises(RegistrationError, match="control character"):
        rt.register_group("g\nh", [echo])


@pytest.mark.timeout(180)
def test_bussdcc_scale_lists_members_by_number_and_says_1_instance() -> None:
    from .decl_parts import service

    rt = ThreadedRuntime(name="polish-scale")
    rt.add_pool("crawler", service, 1)
    rt.start(timeout=60)
    try:
        done = bussdcc("scale", "crawler", "11", "-r", "polish-scale", timeout=150)
        assert done.returncode == 0, done.stderr
        started = [part.split(" (pid")[0] for part in done.stdout.split("; started ", 1)[1].split(", ")]
        assert started == [f"crawler-{k}" for k in range(1, 11)]
        done = bussdcc("scale", "crawler", "1", "-r", "polish-scale", timeout=150)
        assert done.returncode == 0, done.stderr
        removed = ", ".join(f"crawler-{k}" for k in range(1, 11))
        assert done.stdout.strip() == f"crawler: 1 instance; removed {removed}"
    finally:
        rt.stop(timeout=60)


def test_n_0_shows_none_of_the_stored_messages_and_n_all_every_one_everywhere(tmp_path: Path) -> None:
    from bussdcc.supervisor._http import _Filter

    from .test_events_file import _write

    path = _write(tmp_path / "run.mcap")
    none = bussdcc("events", "--file", str(path), "-n", "0")
    assert none.returncode == 0 and none.stdout == "", none.stdout
    every = bussdcc("events", "--file", str(path), "-n", "all")
    assert every.returncode == 0 and len(every.stdout.splitlines()) == 36, every.stderr
    bad = bussdcc("events", "--file", str(path), "-n", "-1")
    assert bad.returncode == 2 and "-n" in bad.stderr
    # The HTTP API: n=0 none, n=all every one it keeps.
    assert _Filter({"n": ["0"]}).lines == 0
    assert _Filter({"n": ["all"]}).lines == _Filter({"n": ["1000000"]}).lines > 100
    # Live: -n 0 shows none of the recent ones (with -f: only new ones), -n all every recent one.
    rt = ThreadedRuntime(name="polish-events")
    rt.start(timeout=30)
    try:
        live_none = bussdcc("events", "polish-events", "-n", "0")
        assert live_none.returncode == 0 and live_none.stdout == "", live_none.stdout
        live_all = bussdcc("events", "polish-events", "-n", "all")
        assert live_all.returncode == 0, live_all.stderr
        assert "runtime.booting" in live_all.stdout.splitlines()[0]
    finally:
        rt.stop(timeout=30)


@pytest.mark.parametrize("interval", [1e10, 1e300])
def test_a_huge_health_interval_does_not_kill_the_health_thread(interval: float) -> None:
    import threading

    from bussdcc import Service
    from bussdcc.worker._health import HealthCheck

    class Patient(Service):
        name = "patient"
        health_interval = interval

        def health(self) -> bool:
            return True

    died: list[BaseException | None] = []
    check = HealthCheck(Patient(), None)  # type: ignore[arg-type]  # the channel is only used after a wait

    def body() -> None:
        try:
            check._run()
        except BaseException as exc:
            died.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(1)  # broken, it dies at once; waiting, it is still alive
    try:
        assert thread.is_alive(), died
    finally:
        check.stop()
        thread.join(30)
    assert not thread.is_alive() and not died

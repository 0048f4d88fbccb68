"""The system file: groups, dependencies, pools, env/cwd/user/group; checked whole, one-line errors."""

from __future__ import annotations

import grp
import os
import pwd
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bussdcc import Runtime, WorkerState
from bussdcc.cli._config import POLICY_KEYS, RUNTIME_KEYS, GroupEntry, WorkerEntry, install, load_system
from bussdcc.errors import ConfigError

from ._cli import ROOT
from ._helpers import Recorder

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="user/group need a runtime running as root (as on CI)")
REPORTER = 'class = "tests.decl_parts:Reporter"'
TWO = f'[[services]]\nname = "a"\n{REPORTER}\n\n[[services]]\nname = "b"\n{REPORTER}\n\n'
ONE = f'[[services]]\nname = "a"\n{REPORTER}\n'
ROOT_USER = os.geteuid() == 0

BAD = [
    (TWO + '[[groups]]\nname = "g"\nmembers = ["a"]\ncolour = 1\n', "12: groups[0].colour: unknown key"),
    (TWO + '[[groups]]\nname = "g"\nmembers = ["a", "zz"]\n', "11: groups[0].members: 'zz' is no declared device"),
    (
        TWO + '[[groups]]\nname = "g"\nstrategy = "all"\nmembers = ["a"]\n',
        "11: groups[0].strategy: group 'g': strategy",
    ),
    (TWO + '[[groups]]\nname = "g"\n', "9: groups[0]: 'members' is required"),
    (
        TWO + '[[groups]]\nname = "g"\nmembers = ["a"]\n\n[[groups]]\nname = "h"\nmembers = ["b", "a"]\n',
        "15: groups[1].members: 'a' is a member of the group 'g' already",
    ),
    (ONE + 'after = ["ghost"]\n', "4: services[0].after: after names 'ghost', which is no registered worker or pool"),
    (ONE + 'after = "b"\n', "4: services[0].after: after must be a list of worker names, not 'b'"),
    (ONE + 'requires = ["a"]\n', "4: services[0].requires: requires names the worker itself"),
    (
        ONE + f'after = ["b"]\n\n[[services]]\nname = "b"\n{REPORTER}\nrequires = ["a"]\n',
        "4: services[0].after: dependency cycle a -> b -> a",
    ),
    (
        f'[[devices]]\nid = "d"\nclass = "tests.decl_parts:Link"\nrequires = ["a"]\n\n{ONE}',
        "4: devices[0].requires: requires names the service 'a', but devices start before services",
    ),
    (ONE + "instances = -1\n", "4: services[0].instances: must be an int >= 0, not -1"),
    (ONE + 'instances = "2"\n', "4: services[0].instances: must be an int >= 0, not '2'"),
    (
        ONE + f'instances = 2\n\n[[services]]\nname = "a-1"\n{REPORTER}\n',
        "7: services[1].name: 'a-1' is used twice",
    ),
    (ONE + 'instances = 2\n\n[[groups]]\nname = "g"\nmembers = ["a"]\n', "8: groups[0].members: 'a' is a pool's"),
    ('[[processes]]\nname = "p"\nclass = "tests._helpers:Recorder"\ninstances = 2\n', "4: processes[0].instances"),
    (ONE + "env = { X = 1 }\n", "4: services[0].env: env X must be a string, not 1"),
    (ONE + 'env = ["X=1"]\n', "4: services[0].env: env must be None or a table of strings"),
    (ONE + 'cwd = "no/such/dir"\n', "4: services[0].cwd: cwd '"),
    (ONE + "cwd = 3\n", "4: services[0].cwd: cwd must be None or a directory path, not 3"),
    (
        ONE + 'user = "no-such-user-9"\n',
        "4: services[0].user: user 'no-such-user-9' does not exist"
        if ROOT_USER
        else "4: services[0].user: user needs a runtime running as root",
    ),
    (
        ONE + 'group = "no-such-group-9"\n',
        "4: services[0].group: group 'no-such-group-9' does not exist"
        if ROOT_USER
        else "4: services[0].group: group needs a runtime running as root",
    ),
    ('[groups]\nname = "g"\n', "1: groups: must be an array of tables ([[groups]])"),
]


@pytest.mark.parametrize(("text", "error"), BAD)
def test_every_error_is_one_line_naming_the_file_line_and_key(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "system.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_system(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{error}"), message
    assert "\n" not in message
    # file:line: section[index].key: why
    assert re.match(rf"{re.escape(str(path))}:\d+: \w+(\[\d+\])?(\.\w+)?: \S", message)


def test_the_spec_is_plain_and_comparable_per_worker(tmp_path: Path) -> None:
    text = (
        '[[devices]]\nid = "bus"\nclass = "tests.decl_parts:Link"\n\n'
        f'[[services]]\nname = "web"\n{REPORTER}\ninstances = 3\nrequires = ["bus"]\nenv = {{ A = "1" }}\n\n'
        f'[[services]]\nname = "x"\n{REPORTER}\n\n[[services]]\nname = "y"\n{REPORTER}\n\n'
        '[[groups]]\nname = "g"\nstrategy = "one_for_all"\nmembers = ["x", "y"]\n'
    )
    path = tmp_path / "sys.toml"
    path.write_text(text)
    spec = load_system(path)
    assert list(spec.workers) == ["bus", "web", "x", "y"]
    assert spec.workers["web"] == WorkerEntry(
        "services", "web", "tests.decl_parts:Reporter", None, {"requires": ["bus"], "env": {"A": "1"}}, 3
    )
    assert spec.workers["web"].members() == ["web-0", "web-1", "web-2"]
    assert spec.groups == {"g": GroupEntry("g", "one_for_all", ("x", "y"))}
    assert [getattr(c, "name", None) for c in spec.components["services"]] == ["web-0", "web-1", "web-2", "x", "y"]
    # The same file twice is the same spec, whatever line each entry moved to; a change is a difference.
    path.write_text("# moved\n\n" + text)
    again = load_system(path)
    assert again.workers == spec.workers and again.groups == spec.groups
    assert again.workers["web"].line == spec.workers["web"].line + 2
    path.write_text(text.replace("instances = 3", "instances = 4"))
    assert load_system(path).workers["web"] != spec.workers["web"]
    assert load_system(path).workers["bus"] == spec.workers["bus"]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may enter (a worker running as nobody works there)."""
    path = Path(tempfile.mkdtemp(prefix="decl-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def _boot(path: Path) -> tuple[Runtime, Recorder]:
    spec = load_system(path)
    rt = Runtime(name=spec.name)
    rec = Recorder()
    rt.register_process(rec)
    install(spec, rt)
    rt.boot()
    return rt, rec


def test_env_and_cwd_are_what_the_worker_sees(tmp_path: Path, open_dir: Path) -> None:
    (tmp_path / "work").mkdir()
    path = tmp_path / "sys.toml"
    path.write_text(
        f'[runtime]\nname = "decl-env"\n\n[[services]]\nname = "rel"\n{REPORTER}\ncwd = "work"\n'
        f'env = {{ DECL_VAR = "hello world" }}\n\n'
        f'[[services]]\nname = "abs"\n{REPORTER}\ncwd = "{open_dir}"\n\n'
        f'[[services]]\nname = "plain"\n{REPORTER}\n'
    )
    rt, rec = _boot(path)
    try:
        seen = {e.payload.worker: e.payload for e in rec.wait_for("test.placed", count=3, timeout=30)}  # type: ignore[attr-defined]
        assert (seen["rel"].cwd, seen["rel"].var) == (str(tmp_path / "work"), "hello world")  # type: ignore[attr-defined]
        assert (seen["abs"].cwd, seen["abs"].var) == (str(open_dir), None)  # type: ignore[attr-defined]
        assert seen["plain"].cwd == os.getcwd() and seen["plain"].var is None  # type: ignore[attr-defined]
        assert "DECL_VAR" not in os.environ
    finally:
        rt.shutdown()


@ROOT_ONLY
def test_user_and_group_are_what_the_worker_runs_as(tmp_path: Path, open_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid).gr_name
    path = tmp_path / "sys.toml"
    path.write_text(
        f'[runtime]\nname = "decl-user"\n\n[[services]]\nname = "dropped"\n{REPORTER}\nuser = "nobody"\n'
        f'cwd = "{open_dir}"\nenv = {{ DECL_VAR = "x" }}\n\n'
        f'[[services]]\nname = "grouped"\n{REPORTER}\ngroup = "{nogroup}"\n\n'
        f'[[services]]\nname = "root"\n{REPORTER}\n'
    )
    rt, rec = _boot(path)
    try:
        seen = {e.payload.worker: e.payload for e in rec.wait_for("test.placed", count=3, timeout=30)}  # type: ignore[attr-defined]
        dropped = seen["dropped"]
        assert (dropped.uid, dropped.gid) == (nobody.pw_uid, nobody.pw_gid)  # type: ignore[attr-defined]
        assert dropped.groups == tuple(sorted(set(os.getgrouplist("nobody", nobody.pw_gid))))  # type: ignore[attr-defined]
        assert (dropped.cwd, dropped.var) == (str(open_dir), "x")  # type: ignore[attr-defined]
        grouped = seen["grouped"]
        assert (grouped.uid, grouped.gid, grouped.groups) == (0, nobody.pw_gid, (nobody.pw_gid,))  # type: ignore[attr-defined]
        assert seen["root"].uid == 0  # type: ignore[attr-defined]
        # Supervised as any other: it stops gracefully, and its respawn drops again.
        status = rt.restart_worker("dropped")
        assert status.state is WorkerState.RUNNING
        again = rec.wait_for("test.placed", lambda e: e.payload.worker == "dropped", count=2, timeout=30)[-1]  # type: ignore[attr-defined]
        assert again.payload.uid == nobody.pw_uid  # type: ignore[attr-defined]
    finally:
        rt.shutdown()
    assert [e.payload.reason for e in rec.of("worker.exited") if e.payload.worker == "dropped"] == ["stopped"] * 2  # type: ignore[attr-defined]


@ROOT_ONLY
def test_user_or_group_is_refused_unless_the_runtime_runs_as_root(open_dir: Path) -> None:
    # The file where nobody can read it; nobody reads it (its effective uid only, and back).
    path = open_dir / "sys.toml"
    path.write_text(f'[[services]]\nname = "a"\n{REPORTER}\nuser = "nobody"\n')
    path.chmod(0o644)
    os.seteuid(pwd.getpwnam("nobody").pw_uid)
    try:
        with pytest.raises(ConfigError) as info:
            load_system(path)
    finally:
        os.seteuid(0)
    assert str(info.value) == (
        f"{path}:4: services[0].user: user needs a runtime running as root (this one runs as uid 65534)"
    )


def test_the_reference_example_loads_and_every_key_is_documented() -> None:
    example = ROOT / "examples" / "reference.toml"
    spec = load_system(example)
    assert set(spec.workers) >= {"bus", "sensor-1", "poller", "crawler", "audit"}
    assert spec.workers["crawler"].members() == ["crawler-0", "crawler-1"]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## System file reference", 1)[1].split("\n## ", 1)[0]
    keys = set(re.findall(r"^#?\s*(\w+)\s*=", example.read_text(), re.MULTILINE))
    documented = set(re.findall(r"`(\w+)`", section))
    # Every setting a worker entry takes, every [runtime] key, and [http]'s one.
    settings = set(POLICY_KEYS) | set(RUNTIME_KEYS) | {"listen"}
    missing = (keys | settings | {"instances", "members", "strategy", "class", "config", "id"}) - documented
    assert not missing, f"keys the README's System file reference does not document: {sorted(missing)}"


@ROOT_ONLY
def test_a_dropped_worker_still_reaches_a_run_directory_made_again(tmp_path: Path, open_dir: Path) -> None:
    import shutil

    path = tmp_path / "sys.toml"
    path.write_text(f'[runtime]\nname = "decl-remade"\n\n[[services]]\nname = "dropped"\n{REPORTER}\nuser = "nobody"\n')
    rt, rec = _boot(path)
    try:
        assert rt.run_dir is not None
        shutil.rmtree(rt.run_dir)
        rec.wait_for("runtime.fault", lambda e: e.payload.part == "run_dir", timeout=30)  # type: ignore[attr-defined]
        status = rt.restart_worker("dropped")
        assert status.state is WorkerState.RUNNING and status.incarnation == 2
        assert not [e for e in rec.of("runtime.fault") if e.payload.part != "run_dir"]  # type: ignore[attr-defined]
    finally:
        rt.shutdown()

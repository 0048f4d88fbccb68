"""Lesser faults of the environment and of the supervisor's own machinery, each with real processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import msgspec
import psutil
import pytest

from bussdcc import Device, Runtime, Service, ThreadedRuntime, WorkerState
from bussdcc.errors import MalformedFrame, RegistrationError
from bussdcc.kernel import protocol as p
from bussdcc.kernel._calls import Latch
from bussdcc.supervisor._forkserver import ForkServer

from ._cli import ROOT, bussdcc, env
from ._helpers import MakeRuntime, Recorder, wait_until
from .cli_parts import Probe

_names = itertools.count()


# ---- 1. a target that cannot be imported, a file that is not UTF-8 -------------------------------

_BAD_IMPORTS = {
    "raises": ("raise RuntimeError('no bus on this board')\n", "RuntimeError: no bus on this board"),
    "syntax": ("def broken(:\n    pass\n", "SyntaxError: "),
    "exits": ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    "exits_quietly": ("raise SystemExit\n", "sys.exit(None)"),
}


def _bad_module(folder: Path, kind: str) -> str:
    name = f"lesser_{kind}_{next(_names)}"
    (folder / f"{name}.py").write_text(_BAD_IMPORTS[kind][0])
    return name


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("kind", sorted(_BAD_IMPORTS))
def test_run_of_a_module_that_fails_at_import_is_one_line_and_exit_1(tmp_path: Path, kind: str) -> None:
    module = _bad_module(tmp_path, kind)
    done = bussdcc("run", f"{module}:rt", PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    line = _one_line(done.stderr)
    assert done.returncode == 1, done
    assert line.startswith(f"bussdcc run: cannot import {module!r}"), line
    assert _BAD_IMPORTS[kind][1] in line, line


@pytest.mark.parametrize("kind", ["raises", "exits"])
def test_worker_of_a_module_that_fails_at_import_is_one_line_and_exit_1(tmp_path: Path, kind: str) -> None:
    module = _bad_module(tmp_path, kind)
    done = bussdcc(
        "worker",
        "--connect",
        str(tmp_path),
        f"{module}:Thing",
        "--name",
        "w",
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
    )
    line = _one_line(done.stderr)
    assert done.returncode == 1, done
    assert line.startswith(f"bussdcc worker: cannot import {module!r}") and _BAD_IMPORTS[kind][1] in line, line


@pytest.fixture
def live() -> Iterator[tuple[ThreadedRuntime, Recorder]]:
    """A runtime in this process, for ``bussdcc spawn`` to talk to."""
    rec = Recorder()
    rt = ThreadedRuntime(name=f"lesser{next(_names)}")
    rt.register_process(rec)
    rt.start(timeout=30)
    try:
        yield rt, rec
    finally:
        rt.stop(timeout=30)


@pytest.mark.parametrize("kind", ["raises", "syntax", "exits"])
def test_spawn_of_a_module_that_fails_at_import_is_one_line_and_adds_nothing(
    live: tuple[ThreadedRuntime, Recorder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    rt, _ = live
    monkeypatch.syspath_prepend(str(tmp_path))  # the runtime (this process) imports the target too
    module = _bad_module(tmp_path, kind)
    path = os.pathsep.join([str(tmp_path), str(ROOT)])
    done = bussdcc("spawn", f"{module}:Thing", "--name", "thing", PYTHONPATH=path)
    line = _one_line(done.stderr)
    assert done.returncode == 1, done
    assert line.startswith(f"bussdcc spawn: cannot import {module!r}") and _BAD_IMPORTS[kind][1] in line, line
    assert rt.workers() == [] and rt.booted


def test_a_system_file_that_is_not_utf8_is_one_line_naming_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[runtime]\nname = "x"\n# caf\xe9 du coin\n'.encode("latin-1"))
    done = bussdcc("run", str(bad))
    line = _one_line(done.stderr)
    assert done.returncode == 1, done
    assert line.startswith(f"bussdcc run: {bad}:3: not UTF-8"), line
    assert "0xe9" in line, line


# ---- 2. a group refused late registers nothing ------------------------------------------------


class Idle(Service):
    """A Service that starts and does nothing."""

    name = "idle"
    interval = 3600.0


class Crowded(Probe):
    """A device that cannot take even one call at a time."""

    concurrency = 0


def _late_service() -> list[Service | Device]:
    bad = Idle()
    bad.name = "late"
    bad.interval = -1.0
    return [Idle(), bad]


@pytest.mark.parametrize(
    ("rest", "error"),
    [
        (_late_service, "'late': interval must be a number >= 0"),
        (lambda: [Crowded(id="late"), Idle()], "'late': concurrency must be an int >= 1, not 0"),
    ],
)
def test_a_group_refused_for_a_later_member_registers_none_of_them(
    rest: Callable[[], list[Service | Device]], error: str
) -> None:
    first = Probe(id="first")
    rt = Runtime(name=f"lesser{next(_names)}")
    with pytest.raises(RegistrationError, match=error):
        rt.register_group("g", [first, *rest()])
    # Nothing of it stayed: a member can be registered again, and only what was registered boots.
    rt.attach_device(first)
    with rt:
        assert [(w.name, w.group) for w in rt.workers()] == [("first", None)]


# ---- 4. a Device has no Service settings ------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("enabled", False), ("interval", 2.0)])
def test_a_device_given_a_service_setting_is_refused_naming_it(key: str, value: object) -> None:
    device = Probe(id="probe")
    setattr(device, key, value)
    rt = Runtime(name=f"lesser{next(_names)}")
    with pytest.raises(RegistrationError, match=rf"^'probe': {key} is a Service setting; a Device has none$"):
        rt.attach_device(device)
    with pytest.raises(RegistrationError, match=f"{key} is a Service setting"):
        rt.register_group("g", [device])
    assert rt.workers() == []


@pytest.mark.parametrize(("key", "value"), [("enabled", "false"), ("interval", "2.0")])
def test_a_device_given_a_service_setting_in_a_file_is_one_line_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    bad = tmp_path / "device.toml"
    bad.write_text(
        f'[runtime]\nname = "x"\n\n[[devices]]\nid = "p"\nclass = "tests.cli_parts:Probe"\n{key} = {value}\n'
    )
    done = bussdcc("run", str(bad), timeout=30)
    assert done.returncode == 1, done
    assert _one_line(done.stderr) == f"bussdcc run: {bad}:7: devices[0].{key}: a Service setting: a Device has none"


def test_spawn_of_a_device_with_a_service_setting_is_one_line_and_adds_nothing(
    live: tuple[ThreadedRuntime, Recorder],
) -> None:
    rt, _ = live
    done = bussdcc("spawn", "tests.cli_parts:Probe", "--name", "p", "--set", "enabled=false")
    assert done.returncode == 1, done
    assert "'enabled' is a Service setting" in _one_line(done.stderr), done.stderr
    assert rt.workers() == []


# ---- 5. reading the supervisor's tables while the hub changes them -----------------------------------


class Dormant(Service):
    """A Service registered disabled: the supervisor knows it, no process runs it."""

    enabled = False
    interval = 3600.0


_ADDED = 2000


@pytest.mark.timeout(120)
def test_stats_and_workers_can_be_read_while_the_hub_adds_workers() -> None:
    rt = Runtime(name=f"lesser{next(_names)}")
    for i in range(500):  # a table long enough to be changed while it is read
        svc = Dormant()
        svc.name = f"d{i}"
        rt.register_service(svc)
    errors: list[BaseException] = []
    done = threading.Event()

    def add() -> None:
        try:
            for i in range(_ADDED):
                if errors:
                    return
                svc = Dormant()
                svc.name = f"late{i}"
                rt.register_service(svc)  # after boot: added by the hub thread
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often: a read that is not atomic gets interleaved
    try:
        with rt:
            adder = threading.Thread(target=add)
            adder.start()
            reads = 0
            while not done.is_set():
                try:
                    stats = rt.stats()
                    rt.workers()
                except RuntimeError as exc:  # "dictionary changed size during iteration"
                    errors.append(exc)
                    break
                reads += 1
            adder.join()
            assert not errors, errors
            assert reads > 0
            stats = rt.stats()
            assert len(stats.restarts) == 500 + _ADDED and set(stats.restarts.values()) == {0}
    finally:
        sys.setswitchinterval(switch)


# ---- 6. a call's reply delivered twice at once ------------------------------------------------


def _yield_between_lines_of(code: CodeType) -> Callable[[FrameType, str, Any], Any]:
    """A trace function that hands the GIL over between every line of ``code``: races show at once."""

    def in_code(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            time.sleep(0)  # releases the GIL: another thread runs its next line here
        return in_code

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        return in_code if frame.f_code is code else None

    return on_call


@pytest.mark.timeout(120)
def test_a_latch_set_from_several_threads_at_once_takes_the_first_reply_only() -> None:
    latches = [Latch() for _ in range(2_000)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def deliver(who: int) -> None:
        reply = p.Reply(who, msgspec.Raw(msgspec.msgpack.encode(who)))
        start.wait()
        sys.settrace(_yield_between_lines_of(Latch.set.__code__))
        try:
            for latch in latches:
                latch.set(reply)
                seen = latch.reply
                # Once set, a reply never changes: a caller that saw one must not find another.
                assert seen is not None and latch.reply is seen
        except BaseException as exc:  # "release unlocked lock", or a reply replaced under a caller
            errors.append(exc)
        finally:
            sys.settrace(None)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    for latch in latches:
        assert latch.wait(0) and latch.wait(0)  # released exactly once: waiting never blocks


# ---- 7. a respawn gives up for a refusal, and lets a bug through ----------------------------------


class Survivor(Service):
    """A Service that comes back quickly after it is killed."""

    name = "survivor"
    interval = 3600.0
    backoff_initial = 0.0


def _fork_spawn_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """From now on, asking a fork server for a process raises ``exc`` (as a broken pipe would).

    No real process can stand for either: losing the fork server halts the runtime, and a bug
    of ours is what the second case is about.
    """

    def spawn(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(ForkServer, "spawn", spawn)


@pytest.mark.parametrize(
    ("exc", "reason", "surfaces"),
    [
        (BrokenPipeError(32, "Broken pipe"), "cannot reach the fork server: [Errno 32] Broken pipe", False),
        (MalformedFrame("a bug of ours"), "internal error while respawning: MalformedFrame('a bug of ours')", True),
    ],
)
def test_a_respawn_gives_up_on_a_refusal_and_lets_a_bug_surface(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, exc: BaseException, reason: str, surfaces: bool
) -> None:
    rec = Recorder()
    rt = Runtime(name=f"lesser{next(_names)}")
    rt.register_process(rec)
    rt.register_service(Survivor())
    rt.attach_device(Probe(id="bystander"))
    with rt:
        pid = rec.wait_for("worker.started", lambda e: e.payload.worker == "survivor")[0].payload.pid  # type: ignore[attr-defined]
        _fork_spawn_raising(monkeypatch, exc)
        os.kill(pid, signal.SIGKILL)
        gave_up = rec.wait_for("worker.gave_up", timeout=30)[0].payload
        assert (gave_up.worker, gave_up.reason) == ("survivor", reason)  # type: ignore[attr-defined]
        status = {w.name: w for w in rt.workers()}
        assert (status["survivor"].state, status["survivor"].pid) == (WorkerState.FAILED, None)
        assert status["bystander"].state is WorkerState.RUNNING  # the runtime carries on
        assert rt.device(Probe, "bystander", timeout=30.0).call(Probe.read, 2)["channel"] == 2
    err = capfd.readouterr().err
    # A refusal is a reason to give up, nothing more; a bug is reported where bugs are.
    assert (
        "a bug of ours" in err or any("a bug of ours" in str(e.payload) for e in rec.of("runtime.fault"))
    ) is surfaces


# ---- 3. a registration after boot that fails leaves no phantom -------------------------------------


class Late(Service):
    """A Service registered after boot, given up on at its first failure."""

    name = "late"
    interval = 3600.0
    restart = False
    start_timeout = 1.0


@pytest.mark.timeout(90)
def test_a_worker_whose_process_never_comes_ends_failed_not_starting_with_no_pid(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime(f"lesser{next(_names)}")
    fork_pid = rt.stats().fork_server_pid
    assert fork_pid is not None
    os.kill(fork_pid, signal.SIGSTOP)  # a fork server far behind: no process is reported in time
    try:
        rt.register_service(Late())
        late = {w.name: w for w in rt.workers()}["late"]
        assert (late.state, late.pid) == (WorkerState.FAILED, None), late
        assert late.last_exit is not None and "reported no process within 1s" in late.last_exit
        exited = rec.wait_for("worker.exited", lambda e: e.payload.worker == "late")[0].payload  # type: ignore[attr-defined]
        assert exited.cause == "start_timeout"  # type: ignore[attr-defined]
    finally:
        os.kill(fork_pid, signal.SIGCONT)
    # The process it makes late is not wanted any more: it is killed, and the runtime carries on.
    again = Idle()
    again.name = "again"
    rt.register_service(again)
    assert {w.name: w.state for w in rt.workers()} == {"late": WorkerState.FAILED, "again": WorkerState.RUNNING}
    wait_until(lambda: len(psutil.Process(fork_pid).children()) == 1, timeout=30, what="the late process killed")


@pytest.mark.parametrize("exc", [BrokenPipeError(32, "Broken pipe"), MalformedFrame("a bug of ours")])
def test_a_start_refused_after_boot_registers_nothing_and_frees_the_name(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    rt = Runtime(name=f"lesser{next(_names)}")
    with rt:
        with monkeypatch.context() as patched:
            _fork_spawn_raising(patched, exc)
            error = RegistrationError if isinstance(exc, OSError) else MalformedFrame
            with pytest.raises(error, match="cannot reach the fork server" if error is RegistrationError else "a bug"):
                rt.register_service(Idle())
            assert rt.workers() == []
        rt.register_service(Idle())  # the name is free again
        assert [(w.name, w.state) for w in rt.workers()] == [("idle", WorkerState.RUNNING)]


# ---- 8. an OOM kill says so ---------------------------------------------------------------------

_OOM_SCRIPT = """
import json, sys, threading
with open(sys.argv[1], "w") as procs:  # into the memory cgroup before anything is forked
    procs.write(str(__import__("os").getpid()))
from bussdcc import Runtime, Service
from bussdcc.message import WorkerExited

class Hog(Service):
    name = "hog"
    interval = 0.01
    restart = False
    def tick(self, ctx):
        self.hoard = [b"x" * (16 << 20) for _ in range(256)]  # 4 GiB, each page touched

exited = []
done = threading.Event()
def record(evt):
    exited.append(evt.payload)
    done.set()
rt = Runtime(name=sys.argv[2])
rt.events.subscribe(WorkerExited, record)
rt.register_service(Hog())
with rt:
    done.wait(60)
print(json.dumps([{"reason": e.reason, "cause": e.cause, "signal": e.signal} for e in exited]))
"""


def _memory_cgroup(name: str, limit: int) -> tuple[Path, Path]:
    """A fresh memory cgroup limited to ``limit`` bytes without swap: (its directory, its procs file)."""
    if os.geteuid() != 0:
        pytest.skip("making a memory cgroup needs root")
    v2 = Path("/sys/fs/cgroup")
    if "memory" in (v2 / "cgroup.controllers").read_text().split() if (v2 / "cgroup.controllers").exists() else ():
        try:
            (v2 / "cgroup.subtree_control").write_text("+memory")
            group = v2 / name
            group.mkdir()
            (group / "memory.max").write_text(str(limit))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
            return group, group / "cgroup.procs"
        except OSError as exc:
            pytest.skip(f"cgroup v2 is here but its memory controller is not writable: {exc}")
    # A v1 memory hierarchy: a child of our own memory cgroup.
    mine = [line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in line]
    root = Path("/sys/fs/cgroup/memory")
    if not mine or not root.is_dir():
        pytest.skip("no cgroup v2 with a memory controller, nor a v1 memory hierarchy, is mounted here")
    try:
        group = root / mine[0].lstrip("/") / name
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        return group, group / "cgroup.procs"
    except OSError as exc:
        pytest.skip(f"the v1 memory hierarchy is not writable here: {exc}")


@pytest.mark.timeout(150)
def test_a_worker_killed_by_the_oom_killer_is_reported_as_out_of_memory(tmp_path: Path) -> None:
    group, procs = _memory_cgroup(f"bussdcc-test-{os.getpid()}-{next(_names)}", 256 << 20)
    try:
        script = tmp_path / "oom.py"
        script.write_text(_OOM_SCRIPT)
        done = subprocess.run(
            [sys.executable, str(script), str(procs), f"lesser{next(_names)}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        exited = json.loads(done.stdout.strip().splitlines()[-1])
        assert [(e["cause"], e["signal"]) for e in exited] == [("signal", "SIGKILL")], exited
        assert exited[0]["reason"] == "killed by SIGKILL (out of memory: the cgroup's oom_kill count rose)"
    finally:
        wait_until(lambda: not procs.read_text().split(), timeout=30, what="the cgroup to empty")
        group.rmdir()

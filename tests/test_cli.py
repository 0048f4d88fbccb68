"""The ``bussdcc`` command against live runtimes: every command runs as a real subprocess."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import zmq

from bussdcc import ThreadedRuntime, WorkerState
from bussdcc.cli._client import client_credentials
from bussdcc.kernel import protocol as p

from ._cli import PLANT, Background, bussdcc
from ._helpers import Echo, Ping, Recorder, wait_until
from .cli_parts import Alarm, Probe

_names = itertools.count()


@pytest.fixture
def live() -> Iterator[tuple[ThreadedRuntime, Recorder]]:
    """A runtime in this process (so the test can look inside it) with a Service and a Device."""
    rec = Recorder()
    rt = ThreadedRuntime(name=f"live{next(_names)}")
    rt.register_process(rec)
    rt.register_service(Echo())
    rt.attach_device(Probe(id="probe"))
    rt.start(timeout=30)
    try:
        yield rt, rec
    finally:
        rt.stop(timeout=30)


def _status(name: str) -> Any:
    done = bussdcc("status", name, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


#: Status fields sampled afresh at every call.
_LIVE_FIELDS = {"uptime", "rss", "cpu_percent"}


def _same_status(cli: list[dict[str, Any]], rt: ThreadedRuntime) -> None:
    """The command's workers are ``rt.workers()``, field for field (live samples only compared for kind)."""
    ours = [msgspec.to_builtins(w) for w in rt.workers()]
    assert [sorted(w) for w in cli] == [sorted(w) for w in ours]
    strip = [{k: v for k, v in w.items() if k not in _LIVE_FIELDS} for w in cli]
    assert strip == [{k: v for k, v in w.items() if k not in _LIVE_FIELDS} for w in ours]
    for before, after in zip(cli, ours, strict=True):
        if before.get("uptime") is not None:
            assert 0 <= before["uptime"] <= after["uptime"]


def _fixed(rt: ThreadedRuntime) -> list[dict[str, Any]]:
    return [{k: v for k, v in msgspec.to_builtins(w).items() if k not in _LIVE_FIELDS} for w in rt.workers()]


def _worker(rt: ThreadedRuntime, name: str) -> Any:
    return {w.name: msgspec.to_builtins(w) for w in rt.workers()}[name]


# ---- status ------------------------------------------------------------------------


def test_status_json_matches_the_runtimes_workers(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, _ = live
    data = _status(rt.name)
    _same_status(data["workers"], rt)
    runtime = data["runtime"]
    assert isinstance(runtime, dict)
    assert runtime["name"] == rt.name and runtime["pid"] == os.getpid()
    assert runtime["dispatched"] <= rt.stats().dispatched


def test_status_table_shows_every_worker(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, _ = live
    done = bussdcc("status", rt.name)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{rt.name}  pid {os.getpid()}")
    header = lines[2].split()
    assert header[:5] == ["WORKER", "ROLE", "STATE", "PID", "RESTARTS"]
    for w in rt.workers():
        row = next(line for line in lines if line.startswith(w.name + " "))
        assert w.role in row and str(w.state) in row and str(w.pid) in row


def test_with_no_name_the_only_runtime_is_meant(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, _ = live
    done = bussdcc("status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runtime"]["name"] == rt.name


# ---- acting on workers -----------------------------------------------------------------


def test_stop_start_restart_a_worker(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, rec = live
    first = _worker(rt, "echo")["pid"]

    done = bussdcc("stop", "echo", "-r", rt.name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo stopped"
    assert _worker(rt, "echo")["state"] == WorkerState.STOPPED
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE

    done = bussdcc("start", "echo")
    assert done.returncode == 0, done.stderr
    second = _worker(rt, "echo")["pid"]
    assert done.stdout.strip() == f"echo started (pid {second})"
    assert second not in (None, first)

    done = bussdcc("restart", "echo")
    assert done.returncode == 0, done.stderr
    third = _worker(rt, "echo")["pid"]
    assert third not in (None, second)
    assert done.stdout.strip() == f"echo stopped; echo started (pid {third})"
    # The restarted worker serves.
    rt.emit(Ping(n=7))
    rec.wait_for("test.pong", lambda e: e.payload.pid == third)  # type: ignore[attr-defined]
    assert [e.payload.pid for e in rec.of("worker.started") if e.source == "runtime"][-2:] == [second, third]  # type: ignore[attr-defined]


def test_unknown_worker_is_one_clear_line(live: tuple[ThreadedRuntime, Recorder]) -> None:
    _rt, _ = live
    done = bussdcc("restart", "nosuch")
    assert done.returncode == 1
    assert done.stderr.strip() == "bussdcc restart: unknown worker 'nosuch' (workers: echo, probe)"
    assert done.stdout == ""


def test_starting_a_running_worker_is_refused_and_changes_nothing(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, _ = live
    before = _fixed(rt)
    done = bussdcc("start", "probe")
    assert done.returncode == 1
    assert "probe is running already" in done.stderr
    assert _fixed(rt) == before


# ---- the secret ------------------------------------------------------------------------


def test_a_client_without_the_secret_is_refused(live: tuple[ThreadedRuntime, Recorder], tmp_path: Path) -> None:
    rt, _ = live
    assert rt.run_dir is not None
    secret = rt.run_dir / "secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    before = _fixed(rt)

    # The real command, pointed at the real endpoint with the wrong secret.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "control.sock").symlink_to(rt.run_dir / "control.sock")
    (fake / "secret").write_bytes(b"not the secret")
    done = bussdcc("stop", "echo", "--run-dir", str(fake))
    assert done.returncode == 1
    assert done.stderr.strip() == "bussdcc stop: refused: wrong secret: nothing was done"

    # A raw client past the handshake (which takes the secret too): in its requests no secret,
    # a wrong one, and garbage.
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    client_credentials(sock, secret.read_bytes())
    sock.connect(f"ipc://{rt.run_dir / 'control.sock'}")
    try:
        for data in (
            p.encode(p.ShutdownRequest(b"")),
            p.encode(p.WorkerRequest(b"x" * 32, "stop", "probe")),
            p.encode(p.SubscribeRequest(b"")),
            b"\x93garbage",
        ):
            sock.send(data)
            assert sock.poll(10_000)
            reply = p.decode(sock.recv(), p.CONTROL_REPLIES)
            assert isinstance(reply, p.Refused), reply
        # A subscription that was refused receives nothing.
        rt.emit(Ping(n=1))
        assert not sock.poll(300)
    finally:
        sock.close()
        zctx.term()
    assert _fixed(rt) == before
    assert rt.booted


def test_an_unreadable_secret_is_a_refusal(live: tuple[ThreadedRuntime, Recorder], tmp_path: Path) -> None:
    rt, _ = live
    assert rt.run_dir is not None
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "control.sock").symlink_to(rt.run_dir / "control.sock")
    done = bussdcc("status", "--run-dir", str(fake))
    assert done.returncode == 1
    assert done.stderr.startswith("bussdcc status: cannot read the runtime's secret")


# ---- spawn and remove ----------------------------------------------------------------------


def test_spawn_adds_a_worker_a_process_sees_emitting_and_remove_removes_it(
    live: tuple[ThreadedRuntime, Recorder],
) -> None:
    rt, rec = live
    done = bussdcc(
        "spawn", "tests.cli_parts:Beeper", "--name", "beeper", "--config", '{"every": 0.02}', "--restart", "false"
    )
    assert done.returncode == 0, done.stderr
    pid = _worker(rt, "beeper")["pid"]
    assert done.stdout.strip() == f"spawned beeper (pid {pid})"
    assert isinstance(pid, int)
    beeps = rec.wait_for("test.beep", lambda e: e.source == "beeper", count=3)
    assert {b.payload.pid for b in beeps} == {pid}  # type: ignore[attr-defined]
    # A fresh interpreter that imported the class, not a fork of this process.
    assert psutil.Process(pid).cmdline()[1:4] == ["-m", "bussdcc", "worker"]
    assert _worker(rt, "beeper")["state"] == WorkerState.RUNNING

    done = bussdcc("remove", "beeper")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "beeper stopped; removed beeper"
    assert "beeper" not in {w.name for w in rt.workers()}
    wait_until(lambda: not psutil.pid_exists(pid), what="the removed worker's process to end")
    exited = rec.wait_for("worker.exited", lambda e: e.payload.worker == "beeper")  # type: ignore[attr-defined]
    assert exited[0].payload.lost == 0  # type: ignore[attr-defined]
    # The name is free again.
    done = bussdcc("spawn", "tests.cli_parts:Probe", "--name", "beeper")
    assert done.returncode == 0, done.stderr
    assert _worker(rt, "beeper")["role"] == "device"


def test_a_spawned_worker_that_crashes_is_respawned(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, rec = live
    done = bussdcc("spawn", "tests.cli_parts:Beeper", "--name", "b2", "--set", "max_restarts=3")
    assert done.returncode == 0, done.stderr
    pid = _worker(rt, "b2")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    rec.wait_for("worker.started", lambda e: e.payload.worker == "b2" and e.payload.pid != pid)  # type: ignore[attr-defined]
    rec.wait_for("test.beep", lambda e: e.source == "b2" and e.payload.pid != pid)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nosuch.module:X"], "cannot import 'nosuch.module'"),
        (["tests.cli_parts:Nope"], "has no attribute 'Nope'"),
        (["tests.cli_parts:Beep"], "is not a Device, Service, Process or Interface class"),
        (["tests.cli_parts:Beeper", "--config", "{bad"], "--config is not valid JSON"),
        (["tests.cli_parts:Beeper", "--set", "colour=red"], "unknown setting 'colour'"),
        (["tests._helpers:Recorder"], "is not a Service or a Device"),
    ],
)
def test_spawn_refuses_a_bad_target_and_adds_nothing(
    live: tuple[ThreadedRuntime, Recorder], args: list[str], error: str
) -> None:
    rt, _ = live
    before = {w.name for w in rt.workers()}
    done = bussdcc("spawn", *args, "--name", "bad")
    assert done.returncode == 1
    assert error in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert {w.name for w in rt.workers()} == before


def test_a_spawned_worker_that_cannot_start_is_reported_and_can_be_removed(
    live: tuple[ThreadedRuntime, Recorder],
) -> None:
    rt, _ = live
    done = bussdcc("spawn", "tests.cli_parts:Broken", "--name", "broken", "--restart", "false")
    assert done.returncode == 1
    assert done.stderr.startswith("bussdcc spawn: broken was added but did not start: ")
    assert "RuntimeError('no hardware here')" in done.stderr
    assert "bussdcc remove broken" in done.stderr and len(done.stderr.splitlines()) == 1
    assert _worker(rt, "broken")["state"] == WorkerState.FAILED
    done = bussdcc("remove", "broken")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "broken was failed; removed broken"
    assert "broken" not in {w.name for w in rt.workers()}


def test_spawn_refuses_a_name_in_use(live: tuple[ThreadedRuntime, Recorder]) -> None:
    _rt, _ = live
    done = bussdcc("spawn", "tests.cli_parts:Beeper", "--name", "echo")
    assert done.returncode == 1
    assert "named 'echo' is registered already" in done.stderr


# ---- a standalone worker --------------------------------------------------------------------


def test_a_standalone_worker_joins_with_the_secret_and_is_dispatched(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, rec = live
    assert rt.run_dir is not None
    worker = Background(["worker", "--connect", str(rt.run_dir), "tests.cli_parts:Beeper", "--name", "solo"])
    try:
        beeps = rec.wait_for("test.beep", lambda e: e.source == "solo", count=2, timeout=30)
        assert {b.payload.pid for b in beeps} == {worker.pid}  # type: ignore[attr-defined]
        assert _worker(rt, "solo")["pid"] == worker.pid
        _same_status(_status(rt.name)["workers"], rt)
        done = bussdcc("stop", "solo")
        assert done.returncode == 0, done.stderr
        assert worker.wait() == 0
        exited = rec.wait_for("worker.exited", lambda e: e.payload.worker == "solo")  # type: ignore[attr-defined]
        assert exited[0].payload.abnormal is False and exited[0].payload.lost == 0  # type: ignore[attr-defined]
    finally:
        worker.stop()


def test_a_standalone_worker_stopped_with_sigterm_stops_gracefully(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, rec = live
    assert rt.run_dir is not None
    worker = Background(["worker", "--connect", str(rt.run_dir), "tests.cli_parts:Beeper", "--name", "solo3"])
    try:
        rec.wait_for("test.beep", lambda e: e.source == "solo3", timeout=30)
        worker.proc.send_signal(signal.SIGTERM)  # what systemd does to stop the unit
        assert worker.wait() == 0
        exited = rec.wait_for("worker.exited", lambda e: e.payload.worker == "solo3")  # type: ignore[attr-defined]
        assert exited[0].payload.cause == "stopped" and not exited[0].payload.abnormal  # type: ignore[attr-defined]
        assert rec.wait_for("service.stopped", lambda e: e.payload.service == "solo3")  # type: ignore[attr-defined]
        assert _worker(rt, "solo3")["state"] == WorkerState.STOPPED
    finally:
        worker.stop()


def test_a_standalone_worker_that_dies_is_noticed(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, rec = live
    assert rt.run_dir is not None
    worker = Background(["worker", "--connect", str(rt.run_dir), "tests.cli_parts:Beeper", "--name", "solo2"])
    try:
        rec.wait_for("test.beep", lambda e: e.source == "solo2", timeout=30)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        exited = rec.wait_for("worker.exited", lambda e: e.payload.worker == "solo2")  # type: ignore[attr-defined]
        assert exited[0].payload.abnormal is True  # type: ignore[attr-defined]
        wait_until(lambda: _worker(rt, "solo2")["state"] == WorkerState.FAILED, what="solo2 to be failed")
    finally:
        worker.stop()


def test_a_standalone_worker_with_a_wrong_secret_is_refused(
    tmp_path: Path, live: tuple[ThreadedRuntime, Recorder]
) -> None:
    rt, _ = live
    assert rt.run_dir is not None
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "control.sock").symlink_to(rt.run_dir / "control.sock")
    (fake / "slots").symlink_to(rt.run_dir / "slots")
    (fake / "secret").write_bytes(b"guess")
    done = bussdcc("worker", "--connect", str(fake), "tests.cli_parts:Beeper", "--name", "intruder")
    assert done.returncode == 1
    assert done.stderr.strip() == "bussdcc worker: refused: wrong secret: nothing was done"
    assert "intruder" not in {w.name for w in rt.workers()}


# ---- events ---------------------------------------------------------------------------------


def test_events_follow_prints_the_live_stream(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, _ = live
    follower = Background(["events", "-f", "-n", "0", "--json", "--name", "test.*"])
    try:
        # Subscribed once the runtime's recent messages include ours and it shows up.
        wait_until(lambda: _emit_and_seen(rt, follower), timeout=20, what="the follower to see a ping")
        rt.emit(Alarm(text="hot"))
        line = follower.wait_line('"test.alarm"')
        record = json.loads(line)
        assert record["severity"] == "WARNING"
        assert record["source"] == "runtime"
        assert record["payload"] == {"text": "hot"}
        pong = json.loads(follower.wait_line('"test.pong"'))
        assert pong["source"] == "echo"
        assert not any("runtime." in line or "worker." in line for line in follower.out)
    finally:
        follower.stop()


def _emit_and_seen(rt: ThreadedRuntime, follower: Background) -> bool:
    rt.emit(Ping(n=99))
    try:
        follower.wait_line('"test.ping"', timeout=0.3)
    except AssertionError:
        return False
    return True


def test_events_shows_recent_messages_filtered_by_severity(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, rec = live
    rt.emit(Alarm(text="first"))
    rt.emit(Ping(n=1))
    rt.emit(Alarm(text="second"))
    for n in range(50):  # more than -n: the filter comes before the count
        rt.emit(Ping(n=n))
    rec.wait_for("test.pong", lambda e: e.payload.n == 49)  # type: ignore[attr-defined]
    done = bussdcc("events", "--severity", "WARNING")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1:3] for line in lines] == [["WARNING", "test.alarm"], ["WARNING", "test.alarm"]]
    assert '{"text": "first"}' in lines[0] and '{"text": "second"}' in lines[1]
    done = bussdcc("events", "-n", "1", "--severity", "WARNING")
    assert len(done.stdout.splitlines()) == 1 and '{"text": "second"}' in done.stdout
    done = bussdcc("events", "-n", "1000", "--name", "runtime.boot*", "--json")
    assert [json.loads(line)["name"] for line in done.stdout.splitlines()] == ["runtime.booting", "runtime.booted"]
    done = bussdcc("events", "-n", "3", "--name", "test.pong", "--json")
    assert [json.loads(line)["payload"]["n"] for line in done.stdout.splitlines()] == [47, 48, 49]


# ---- finding runtimes -------------------------------------------------------------------------


def test_no_runtime_is_one_clear_line() -> None:
    done = bussdcc("status")
    assert done.returncode == 1
    assert done.stderr.startswith("bussdcc status: no runtime is running (looked in ")
    done = bussdcc("stop", "x", "-r", "ghost")
    assert done.returncode == 1
    assert "no runtime named 'ghost' is running" in done.stderr


def test_several_runtimes_need_a_name_and_stale_ones_are_ignored(run_base: Path) -> None:
    stale = run_base / "stale-abcd"
    stale.mkdir()
    (stale / "runtime.json").write_text(json.dumps({"name": "stale", "pid": 2**22 + 1, "started": 0}))
    (stale / "control.sock").touch()
    a, b = ThreadedRuntime(name="alpha"), ThreadedRuntime(name="beta")
    a.start(timeout=30)
    b.start(timeout=30)
    try:
        done = bussdcc("status")
        assert done.returncode == 1
        assert "2 runtimes are running, name one: alpha (pid" in done.stderr and "beta (pid" in done.stderr
        assert "stale" not in done.stderr
        assert json.loads(bussdcc("status", "beta", "--json").stdout)["runtime"]["name"] == "beta"
        assert b.run_dir is not None
        done = bussdcc("status", "--run-dir", str(b.run_dir), "--json")
        assert json.loads(done.stdout)["runtime"]["name"] == "beta"
    finally:
        a.stop(timeout=30)
        b.stop(timeout=30)
        (stale / "runtime.json").unlink()
        (stale / "control.sock").unlink()
        stale.rmdir()


# ---- run, shutdown, help -------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def test_run_plant_toml_shuts_down_cleanly_on_sigterm(run_base: Path) -> None:
    plant = Background(["run", str(PLANT), "--name", "plant-sigterm"])
    try:
        plant.wait_line("plant-sigterm running", err=True)
        data = _status("plant-sigterm")
        workers = data["workers"]
        assert isinstance(workers, list)
        assert {w["name"] for w in workers} == {"sensor-1", "controller"}
        children = _descendants(plant.pid)
        plant.proc.send_signal(signal.SIGTERM)
        assert plant.wait(timeout=20) == 0
    finally:
        plant.stop()
    assert any("plant-sigterm shut down" in line for line in plant.err)
    assert any("service.stopped" in line for line in plant.out)
    assert not [pid for pid in children if psutil.pid_exists(pid)]
    assert list(run_base.iterdir()) == []


def test_shutdown_command_stops_a_runtime_and_waits(run_base: Path) -> None:
    plant = Background(["run", "tests.cli_parts:make_runtime"])
    try:
        plant.wait_line("made running", err=True)
        assert {w["name"] for w in _status("made")["workers"]} == {"probe", "beeper"}
        follower = Background(["events", "-f"])
        follower.wait_line("runtime.booted")
        done = bussdcc("shutdown", "made", "--reason", "maintenance")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"made shut down (pid {plant.pid})"
        # A follower sees the shutdown and ends with the runtime.
        assert follower.wait() == 0
        assert "maintenance" in follower.wait_line("runtime.shutting_down")
        # The command waited: the runtime is gone when it returns.
        assert plant.proc.poll() is not None or plant.wait(5) == 0
        assert plant.wait() == 0
    finally:
        plant.stop()
    assert list(run_base.iterdir()) == []


def test_shutdown_command_stops_an_embedded_runtime_whose_process_lives_on(
    live: tuple[ThreadedRuntime, Recorder],
) -> None:
    rt, rec = live
    done = bussdcc("shutdown", rt.name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{rt.name} shut down (pid {os.getpid()})"
    assert rt.wait(10)
    # The shutdown ran on a thread of its own, which ends right after.
    wait_until(lambda: "bussdcc-halt" not in {t.name for t in threading.enumerate()}, what="the halt thread to end")
    assert rec.of("runtime.shutdown")[0].payload.reason == "shutdown requested over the control endpoint"  # type: ignore[attr-defined]
    assert not rt.booted


def test_bad_config_is_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[runtime]\nname = "x"\n\n[[services]]\nclass = "plant:Controller"\nname = "c"\ninterval = 1\nspeed = 3\n'
    )
    done = bussdcc("run", str(bad))
    assert done.returncode == 1
    assert done.stderr.strip() == f"bussdcc run: {bad}:8: services[0].speed: unknown key"
    bad.write_text('[[devices]]\nclass = "plant:FlakySensor"\n')
    done = bussdcc("run", str(bad))
    assert done.stderr.strip() == f"bussdcc run: {bad}:1: devices[0]: 'id' is required (a string)"
    bad.write_text('[[devices]]\nid = "d"\nclass = "plant:Nope"\n')
    done = bussdcc("run", str(bad))
    assert done.stderr.strip() == f"bussdcc run: {bad}:3: devices[0].class: module 'plant' has no attribute 'Nope'"
    bad.write_text("[[devices]\n")
    done = bussdcc("run", str(bad))
    assert done.returncode == 1 and "(at line 1, column" in done.stderr
    service = '[[services]]\nclass = "plant:Controller"\nname = "c"\n'
    for text, error in [
        ("services = [1, 2]\n", ":1: services[0]: must be a table ([[services]]), not 1"),
        (
            service + 'max_restarts = "lots"\n',
            ":4: services[0].max_restarts: max_restarts must be an int >= 0, not 'lots'",
        ),
        (service + "interval = -1\n", ":4: services[0].interval: interval must be a number >= 0"),
        (service + 'restart = "sometimes"\n', ":4: services[0].restart: restart must be True, False or one of"),
        (service + "\n" + service, ":7: services[1].name: 'c' is used twice"),
    ]:
        bad.write_text(text)
        done = bussdcc("run", str(bad))
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"bussdcc run: {bad}{error}"), done.stderr


COMMANDS = ["run", "status", "start", "stop", "restart", "shutdown", "spawn", "remove", "worker", "events", "call"]


def test_help_for_every_command() -> None:
    done = bussdcc("--help")
    assert done.returncode == 0
    for command in COMMANDS:
        assert command in done.stdout
        sub = bussdcc(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.startswith(f"usage: bussdcc {command}")
    # A usage error is one line too, and exit status 2.
    done = bussdcc("spawn", "x:Y")
    assert done.returncode == 2
    assert done.stderr == "bussdcc spawn: the following arguments are required: --name (see bussdcc spawn --help)\n"


def test_the_console_script_is_installed() -> None:
    import shutil
    import subprocess
    import sys

    script = shutil.which("bussdcc", path=str(Path(sys.executable).parent))
    assert script is not None
    done = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith("bussdcc ")


def test_run_speaks_systemds_notify_protocol(tmp_path: Path) -> None:
    import socket

    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    plant = Background(["run", str(PLANT), "--name", "plant-notify"], NOTIFY_SOCKET=address, WATCHDOG_USEC="100000")
    try:
        ready = sock.recv(4096).decode()
        assert ready.splitlines()[:2] == ["READY=1", f"MAINPID={plant.pid}"]
        # Ready means ready: the control endpoint answers and every worker is up.
        assert {w["state"] for w in _status("plant-notify")["workers"]} == {"running"}
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
        plant.proc.send_signal(signal.SIGTERM)
        seen = []
        while (msg := sock.recv(4096)) == b"WATCHDOG=1":
            seen.append(msg)
        assert msg == b"STOPPING=1"
        assert plant.wait() == 0
    finally:
        plant.stop()
        sock.close()


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ThreadedRuntime, Recorder]]:
    """A live runtime whose control socket queues one frame per subscriber: a reader that stops falls behind."""
    from bussdcc.supervisor import _control

    monkeypatch.setattr(_control, "_SUB_HWM", 1)
    rec = Recorder()
    rt = ThreadedRuntime(name=f"live{next(_names)}")
    rt.register_process(rec)
    rt.register_service(Echo())
    rt.start(timeout=30)
    try:
        yield rt, rec
    finally:
        rt.stop(timeout=30)


def test_a_slow_subscriber_misses_messages_counted_and_never_slows_dispatch(
    narrow: tuple[ThreadedRuntime, Recorder],
) -> None:
    rt, rec = narrow
    assert rt.run_dir is not None
    secret = (rt.run_dir / "secret").read_bytes()
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10)
    client_credentials(sock, secret)
    sock.connect(f"ipc://{rt.run_dir / 'control.sock'}")
    try:
        sock.send(p.encode(p.SubscribeRequest(secret)))
        assert sock.poll(10_000)
        assert isinstance(p.decode(sock.recv(), p.CONTROL_REPLIES), p.Done)
        total = 30_000
        for n in range(total):  # nobody reads the subscription meanwhile
            rt.emit(Ping(n=n))
        rec.wait_for("test.ping", lambda e: e.payload.n == total - 1)  # type: ignore[attr-defined]
        assert len(rec.of("test.ping")) == total  # dispatch lost nothing
        wait_until(lambda: _status(rt.name)["runtime"]["events_dropped"] > 0, what="drops to be counted")
        # The subscriber learns how many it missed with the next message it gets.
        seen: list[p.Events] = []

        def accounted() -> bool:
            while sock.poll(0):
                reply = p.decode(sock.recv(), p.CONTROL_REPLIES)
                assert isinstance(reply, p.Events)
                seen.append(reply)
            rt.emit(Ping(n=-1))  # carries the count of what was missed before it
            # Every ping and its pong was either received or counted as missed.
            return sum(e.dropped + len(e.items) for e in seen) >= 2 * total

        wait_until(accounted, timeout=30, what="every message received or counted as missed")
        assert sum(e.dropped for e in seen) > 0
    finally:
        sock.close()
        zctx.term()


# ---- call --------------------------------------------------------------------------


def test_call_runs_a_device_method_in_its_process_and_prints_json(live: tuple[ThreadedRuntime, Recorder]) -> None:
    rt, _ = live
    done = bussdcc("call", "probe", "read", "[3]", "--kwargs", '{"scale": 2.5}', "-r", rt.name)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (probe,) = [w for w in rt.workers() if w.name == "probe"]
    assert result == {"channel": 3, "value": 7.5, "pid": probe.pid} and probe.pid != os.getpid()


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["probe", "jam"], "DeviceError: probe.jam() raised ValueError: the probe is jammed"),
        (["probe", "connect"], "has no callable method 'connect' (methods: jam, read)"),
        (["nosuch", "read"], "unknown device 'nosuch' (devices: probe)"),
        (["probe", "read", "[1"], "ARGS is not valid JSON"),
        (["probe", "read", '{"channel": 1}'], "ARGS must be a JSON array"),
    ],
)
def test_call_errors_are_one_clear_line(live: tuple[ThreadedRuntime, Recorder], argv: list[str], error: str) -> None:
    rt, _ = live
    done = bussdcc("call", *argv, "-r", rt.name)
    assert done.returncode == 1
    assert done.stderr.startswith("bussdcc call: ") and error in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1


def test_run_exits_non_zero_when_a_critical_worker_fails(tmp_path: Path) -> None:
    system = tmp_path / "critical.toml"
    system.write_text(
        "[runtime]\n"
        'name = "critical-run"\n\n'
        "[[services]]\n"
        'class = "tests.cli_parts:Chatty"\n'
        'name = "chatty"\n'
        "config = { lines = 1, crash = true }\n"
        "critical = true\n"
        "restart = false\n"
    )
    done = bussdcc("run", str(system), timeout=60)
    assert done.returncode == 1, done.stderr
    assert "critical service 'chatty' failed" in done.stderr


def test_removing_a_group_member_is_refused_before_anything_changes() -> None:
    rt = ThreadedRuntime(name=f"live{next(_names)}")
    rt.register_group("pair", [Echo()])
    rt.start(timeout=30)
    try:
        done = bussdcc("remove", "echo", "-r", rt.name)
        assert done.returncode == 1 and "member of the group 'pair'" in done.stderr, done.stderr
        assert [(w.name, w.state) for w in rt.workers()] == [("echo", WorkerState.RUNNING)]
    finally:
        rt.stop(timeout=30)

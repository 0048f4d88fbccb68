"""Faults of the environment around the fork server: failed forks, and signals sent to the whole group."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from bussdcc import Context, Runtime, Service
from bussdcc.errors import BussdccError

from ._cli import ROOT, env
from ._helpers import Recorder, Where, wait_until

# ---- class 1: a failed fork is one worker's failed spawn ------------------------------------------


class Steady(Service):
    """Emits its pid, over and over, from one process that must never change."""

    name = "steady"
    interval = 0.05

    def tick(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="tick", pid=os.getpid()))


class Flaky(Service):
    """A service whose respawns the tests make fail; it says when it starts."""

    name = "flaky"
    interval = 3600.0
    max_restarts = 1000
    restart_window = 60.0
    backoff_initial = 0.05
    backoff_max = 0.2

    def start(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="start", pid=os.getpid()))


def _fork_server(workers: list[int]) -> psutil.Process:
    """The fork server: this process's one child, the parent of every worker."""
    (server,) = [c for c in psutil.Process().children() if c.pid not in workers]
    assert {c.pid for c in server.children()} >= set(workers)
    return server


def _pid(rt: Runtime, name: str) -> int:
    (pid,) = [w.pid for w in rt.workers() if w.name == name]
    assert pid is not None
    return pid


def _of(rec: Recorder, name: str, worker: str) -> list[Any]:
    return [e.payload for e in rec.of(name) if e.payload.to_dict().get("worker") == worker]


def _ticks(rec: Recorder) -> set[int]:
    return {e.payload.pid for e in rec.of("test.where") if isinstance(e.payload, Where) and e.payload.who == "steady"}


def _count_ticks(rec: Recorder) -> int:
    return sum(1 for e in rec.of("test.where") if isinstance(e.payload, Where) and e.payload.who == "steady")


def _failing_respawns(
    rt: Runtime, rec: Recorder, lower: Callable[[psutil.Process], None], lift: Callable[[], None], expect: str
) -> None:
    """Kill ``flaky`` with the fork server at a limit; check its respawns fail, alone, until ``lift``."""
    steady, flaky = _pid(rt, "steady"), _pid(rt, "flaky")
    server = _fork_server([steady, flaky])
    lower(server)
    os.kill(flaky, signal.SIGKILL)
    # Each failed spawn is that worker's exit, with the errno, and a retry after a backoff.
    failed = rec.wait_for(
        "worker.exited",
        lambda e: e.payload.to_dict()["worker"] == "flaky" and e.payload.to_dict()["cause"] == "spawn_failed",
        count=3,
        timeout=30,
    )
    reason = failed[0].payload.to_dict()["reason"]
    assert reason.startswith("spawn failed: ") and expect in reason, reason
    backoffs = rec.wait_for("worker.backoff", lambda e: e.payload.to_dict()["worker"] == "flaky", count=3)
    assert expect in backoffs[-1].payload.to_dict()["reason"]
    # Meanwhile the rest carried on: the same steady process ticks on, the fork server lives.
    seen = _count_ticks(rec)
    wait_until(lambda: _count_ticks(rec) >= seen + 3, timeout=20, what="steady to tick on")
    assert _ticks(rec) == {steady}
    assert _pid(rt, "steady") == steady
    assert server.is_running()
    assert not _of(rec, "worker.gave_up", "flaky")
    # Once the limit is gone, the next retry starts it.
    lift()
    rec.wait_for("worker.started", lambda e: e.payload.to_dict()["worker"] == "flaky", count=2, timeout=30)
    again = [e.payload for e in rec.of("test.where") if isinstance(e.payload, Where) and e.payload.who == "flaky"]
    assert len(again) == 2 and again[-1].pid not in (flaky, steady)
    assert server.is_running() and _pid(rt, "steady") == steady


@pytest.mark.timeout(90)
def test_a_fork_server_out_of_fds_fails_one_spawn_and_retries_it() -> None:
    rec = Recorder()
    rt = Runtime(name="spawn-emfile")
    rt.register_process(rec)
    rt.register_service(Steady())
    rt.register_service(Flaky())
    rt.boot()
    try:
        soft, hard = 0, 0

        def lower(server: psutil.Process) -> None:
            nonlocal soft, hard
            soft, hard = server.rlimit(psutil.RLIMIT_NOFILE)
            # At its fd limit: the few descriptors flaky's death frees are not enough for a spawn.
            used = {int(fd) for fd in os.listdir(f"/proc/{server.pid}/fd")}
            server.rlimit(psutil.RLIMIT_NOFILE, (min(set(range(len(used) + 1)) - used), hard))

        def lift() -> None:
            _fork_server([_pid(rt, "steady")]).rlimit(psutil.RLIMIT_NOFILE, (soft, hard))

        _failing_respawns(rt, rec, lower, lift, f"[Errno {errno.EMFILE}] Too many open files (EMFILE)")
    finally:
        rt.shutdown()
    assert rt.failure is None


_PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A cgroup of the pids controller to put the fork server in (a container's pids limit)."""
    if not os.access(_PIDS_CGROUP, os.W_OK):
        pytest.skip("needs a writable cgroup-v1 pids controller (root) to set a pids limit")
    path = _PIDS_CGROUP / f"bdt-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a pids cgroup: {exc}")
    try:
        yield path
    finally:
        # Empty once the runtime is down (its processes are gone, or going).
        wait_until(lambda: not (path / "cgroup.procs").read_text().split(), timeout=10, what="an empty cgroup")
        path.rmdir()


@pytest.mark.timeout(90)
def test_a_fork_at_the_pids_limit_fails_one_spawn_and_retries_it(pids_cgroup: Path) -> None:
    rec = Recorder()
    rt = Runtime(name="spawn-eagain")
    rt.register_process(rec)
    rt.register_service(Steady())
    rt.register_service(Flaky())
    rt.boot()
    try:

        def lower(server: psutil.Process) -> None:
            # Only the fork server moves; its limit of one process is itself: fork() gets EAGAIN.
            (pids_cgroup / "pids.max").write_text("1")
            (pids_cgroup / "cgroup.procs").write_text(str(server.pid))

        def lift() -> None:
            (pids_cgroup / "pids.max").write_text("max")

        _failing_respawns(
            rt, rec, lower, lift, f"fork: [Errno {errno.EAGAIN}] Resource temporarily unavailable (EAGAIN)"
        )
    finally:
        rt.shutdown()
    assert rt.failure is None


class Explodes(Service):
    """Unpickling it in the fork server raises SystemExit: the worst a request can do there."""

    name = "explodes"
    interval = 3600.0

    def __reduce__(self) -> tuple[Any, ...]:
        return (sys.exit, (7,))


def test_a_request_the_fork_server_cannot_unpickle_fails_alone_and_is_not_retried() -> None:
    rec = Recorder()
    rt = Runtime(name="spawn-unpickle")
    rt.register_process(rec)
    rt.register_service(Steady())
    rt.boot()
    try:
        steady = _pid(rt, "steady")
        server = _fork_server([steady])
        pickle.dumps(Explodes())  # the parent can pickle it; only loading it fails
        try:
            rt.register_service(Explodes())
        except BussdccError:
            pass
        (exited,) = rec.wait_for("worker.exited", lambda e: e.payload.to_dict()["worker"] == "explodes")
        assert exited.payload.to_dict()["cause"] == "spawn_failed"
        assert "SystemExit" in exited.payload.to_dict()["reason"]
        rec.wait_for("worker.gave_up", lambda e: e.payload.to_dict()["worker"] == "explodes")
        assert not _of(rec, "worker.backoff", "explodes"), "no retry makes an unloadable component loadable"
        # The fork server lives on and still forks.
        seen = _count_ticks(rec)
        wait_until(lambda: _count_ticks(rec) >= seen + 3, timeout=20, what="steady to tick on")
        assert server.is_running() and _pid(rt, "steady") == steady
        flaky = Flaky()
        rt.register_service(flaky)
        assert _pid(rt, "flaky") in {c.pid for c in server.children()}
    finally:
        rt.shutdown()
    assert rt.failure is None


# ---- class 4: signals to the whole process group ------------------------------------------------

_PARTS = '''
import os
import time
from pathlib import Path

from bussdcc import Context, Device, Runtime, Service

MARKS = Path(os.environ["BDT_MARKS"])


def mark(what: str) -> None:
    (MARKS / f"{what}-{os.getpid()}").touch()


class Meter(Device):
    """A device that notes its connect and disconnect."""

    kind = "meter"

    def connect(self) -> None:
        mark(f"connect-{self.id}")

    def disconnect(self) -> None:
        time.sleep(0.2)  # a disconnect that takes a moment: the group signal must not cut it short
        mark(f"disconnect-{self.id}")


class Poller(Service):
    """A service that notes its start and stop."""

    def start(self, ctx: Context) -> None:
        mark(f"start-{self.name}")

    def tick(self, ctx: Context) -> None:
        pass

    def stop(self, ctx: Context) -> None:
        time.sleep(0.2)
        mark(f"stop-{self.name}")


def system() -> Runtime:
    """The same system as a plain Runtime (``bussdcc run groupparts:system``)."""
    rt = Runtime(name=os.environ["BDT_NAME"])
    for n in (1, 2):
        rt.attach_device(Meter(id=f"meter-{n}"))
    for n in (1, 2):
        poller = Poller()
        poller.name = f"poller-{n}"
        poller.interval = 0.1
        rt.register_service(poller)
    return rt
'''

_SYSTEM = """
[runtime]
name = "{name}"

[[devices]]
class = "groupparts:Meter"
id = "meter-1"

[[devices]]
class = "groupparts:Meter"
id = "meter-2"

[[services]]
class = "groupparts:Poller"
name = "poller-1"
interval = 0.1

[[services]]
class = "groupparts:Poller"
name = "poller-2"
interval = 0.1
"""


class _Session:
    """``bussdcc run -v SYSTEM`` as the leader of a process group of its own (as a unit or a shell job)."""

    def __init__(self, tmp_path: Path, name: str, target: str = "toml") -> None:
        """``target``: the system as a TOML file (a SignalRuntime), or ``module`` (a plain Runtime)."""
        (tmp_path / "groupparts.py").write_text(textwrap.dedent(_PARTS))
        system = tmp_path / "system.toml"
        system.write_text(_SYSTEM.format(name=name))
        what = str(system) if target == "toml" else "groupparts:system"
        environ = env(BDT_MARKS=str(tmp_path / "marks"), BDT_NAME=name)
        environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{environ['PYTHONPATH']}"  # the module target's home
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bussdcc", "run", "-v", what],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            cwd=ROOT,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def count(self, needle: str, *, err: bool = False) -> int:
        with self._cond:
            return sum(1 for line in (self.err if err else self.out) if needle in line)

    def wait_count(self, needle: str, count: int = 1, *, err: bool = False, timeout: float = 30.0) -> None:
        wait_until(
            lambda: self.count(needle, err=err) >= count or self.proc.poll() is not None,
            timeout=timeout,
            what=f"{count} x {needle!r}",
        )
        assert self.count(needle, err=err) >= count, f"{needle!r}: stdout {self.out}, stderr {self.err}"

    def tree(self) -> set[int]:
        """The runtime and every process under it."""
        root = psutil.Process(self.proc.pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}

    def marked(self, prefix: str) -> set[str]:
        return {p.name.rsplit("-", 1)[0] for p in self.marks.iterdir() if p.name.startswith(prefix)}

    def end(self) -> int:
        """Wait for the command, killing the whole group if it never ends."""
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.pgid, signal.SIGKILL)
            code = self.proc.wait(30)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    def up(self) -> set[int]:
        self.wait_count(f"{self.name} running", err=True)
        wait_until(lambda: len(self.marked("start-")) == 2 and len(self.marked("connect-")) == 2, timeout=20)
        return self.tree()


def _graceful_end(session: _Session, tree: set[int], run_base: Path) -> None:
    code = session.end()
    assert code == 0, f"exit {code}: stdout {session.out}, stderr {session.err}"
    assert session.marked("stop-") == {"stop-poller-1", "stop-poller-2"}, session.err
    assert session.marked("disconnect-") == {"disconnect-meter-1", "disconnect-meter-2"}, session.err
    _, alive = psutil.wait_procs([psutil.Process(p) for p in tree if psutil.pid_exists(p)], timeout=10)
    assert not alive, f"left behind: {alive}"
    assert not [p for p in run_base.iterdir() if p.name.startswith(session.name)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["toml", "module"])
def test_sigterm_to_the_whole_group_is_a_graceful_shutdown(tmp_path: Path, run_base: Path, target: str) -> None:
    session = _Session(tmp_path, f"group-term-{target}", target)
    try:
        tree = session.up()
        os.killpg(session.pgid, signal.SIGTERM)  # systemd's KillMode=control-group
    finally:
        _graceful_end(session, tree, run_base)
    assert any(f"group-term-{target} shut down (Terminated)" in line for line in session.err), session.err
    assert session.count("service.stopped") == 2 and session.count("device.detached") == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["toml", "module"])
def test_hup_and_usr_signals_to_the_group_reach_only_the_runtime(tmp_path: Path, run_base: Path, target: str) -> None:
    session = _Session(tmp_path, f"group-hup-{target}", target)
    try:
        tree = session.up()
        os.killpg(session.pgid, signal.SIGHUP)
        session.wait_count("system.reload")
        os.killpg(session.pgid, signal.SIGUSR1)
        session.wait_count("system.signal")
        os.killpg(session.pgid, signal.SIGUSR2)
        session.wait_count("system.signal", 2)
        # Nobody died of them: the same processes, no worker exited.
        assert session.proc.poll() is None
        assert session.tree() == tree
        assert not session.count("worker.exited")
        os.killpg(session.pgid, signal.SIGTERM)
    finally:
        _graceful_end(session, tree, run_base)


class Patient(Service):
    """Notes its stop; a lone SIGTERM should still bring it there."""

    name = "patient"
    interval = 3600.0
    stop_timeout = 0.5

    def stop(self, ctx: Context) -> None:
        ctx.emit(Where(who=self.name, step="stop", pid=os.getpid()))


def test_a_lone_sigterm_to_a_worker_still_stops_it_gracefully() -> None:
    rec = Recorder()
    rt = Runtime(name="lone-term")
    rt.register_process(rec)
    rt.register_service(Patient())
    rt.boot()
    try:
        pid = _pid(rt, "patient")
        os.kill(pid, signal.SIGTERM)
        (exited,) = rec.wait_for("worker.exited", timeout=20)
        assert exited.payload.to_dict()["cause"] == "exited", exited.payload
        stops = [e.payload for e in rec.of("test.where") if isinstance(e.payload, Where) and e.payload.step == "stop"]
        assert [s.pid for s in stops] == [pid], "stop() ran in the worker before it ended"
        # It ended normally, so its policy (permanent) brings it back.
        rec.wait_for("worker.started", count=2, timeout=20)
    finally:
        rt.shutdown()
    assert rt.failure is None


def test_hup_and_usr_signals_to_a_worker_are_ignored_and_not_inherited_by_what_it_execs() -> None:
    rec = Recorder()
    rt = Runtime(name="worker-hup")
    rt.register_process(rec)
    rt.register_service(Steady())
    rt.boot()
    try:
        pid = _pid(rt, "steady")
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            os.kill(pid, sig)
        seen = _count_ticks(rec)
        wait_until(lambda: _count_ticks(rec) >= seen + 3, timeout=20, what="steady to tick on")
        assert _pid(rt, "steady") == pid and not rec.of("worker.exited")
        # Caught (not ignored) in the worker, so a program it execs gets the default actions back.
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        ignored, caught = int(fields["SigIgn"], 16), int(fields["SigCgt"], 16)
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
            bit = 1 << (sig - 1)
            assert caught & bit and not ignored & bit, sig.name
    finally:
        rt.shutdown()


def test_the_fork_server_ignores_what_is_the_parents_business() -> None:
    rec = Recorder()
    rt = Runtime(name="fork-ignores")
    rt.register_process(rec)
    rt.register_service(Steady())
    rt.boot()
    try:
        pid = _pid(rt, "steady")
        server = _fork_server([pid])
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
            server.send_signal(sig)
        seen = _count_ticks(rec)
        wait_until(lambda: _count_ticks(rec) >= seen + 3, timeout=20, what="steady to tick on")
        assert server.is_running() and _pid(rt, "steady") == pid
        assert not rec.of("worker.exited")
    finally:
        rt.shutdown()
    assert rt.failure is None

"""The supervisor's own machinery under environmental faults: backoff arithmetic, periodic jobs, fds, control."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bussdcc import Context, Event, Message, Process, Runtime, Service, WorkerState
from bussdcc.kernel import _builtin as m
from bussdcc.supervisor._backoff import backoff_delay

from . import _cli
from ._helpers import wait_until as _wait_until

# ---- class 3: the backoff is capped arithmetic ------------------------------------------


@given(
    streak=st.integers(min_value=0, max_value=10**12),
    initial=st.floats(min_value=0.0, max_value=1e300),
    maximum=st.floats(min_value=0.0, max_value=1e300),
    jitter=st.floats(min_value=0.75, max_value=1.25),
)
def test_the_backoff_is_defined_for_any_streak(streak: int, initial: float, maximum: float, jitter: float) -> None:
    delay = backoff_delay(streak, initial, maximum, jitter)
    assert 0.0 <= delay <= maximum
    if streak == 0:
        assert delay == 0.0


def test_the_backoff_doubles_then_stays_at_its_maximum() -> None:
    assert [backoff_delay(n, 0.05, 2.0) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    for streak in (1024, 1025, 1026, 10**6, 10**18):
        assert backoff_delay(streak, 0.05, 2.0) == 2.0
        assert backoff_delay(streak, 1e-300, 5.0, 1.25) == 5.0
    assert backoff_delay(1025, 0.0, 2.0) == 0.0


class _Streaks(Process):
    """Remembers the longest failure streak announced for its worker (without keeping every event)."""

    name = "streaks"

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.attempt = 0
        self.started_after = 0  # spawns announced after the longest streak so far
        self.gave_up: list[str] = []
        self._cond = threading.Condition()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        msg = evt.payload
        with self._cond:
            if isinstance(msg, m.WorkerBackoff) and msg.worker == self.worker:
                self.attempt = max(self.attempt, msg.attempt)
            elif isinstance(msg, m.WorkerGaveUp) and msg.worker == self.worker:
                self.gave_up.append(msg.reason)
            self._cond.notify_all()

    def wait_attempt(self, attempt: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.attempt < attempt and not self.gave_up:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.attempt


class _DiesAtOnce(Service):
    """Every incarnation ends before it is ready."""

    name = "dies"
    interval = 3600.0
    max_restarts = 10**9
    restart_window = 3600.0
    backoff_initial = 0.0001
    backoff_max = 0.001

    def start(self, ctx: Context) -> None:
        os._exit(3)


class _Retried(Service):
    """A healthy service whose respawns the environment will refuse for a while."""

    name = "retried"
    interval = 3600.0
    max_restarts = 10**9
    restart_window = 3600.0
    backoff_initial = 0.0001
    backoff_max = 0.001


@pytest.mark.timeout(240)
def test_supervision_goes_on_after_over_a_thousand_failed_spawns_in_a_row() -> None:
    # Spawns that the real fork server cannot make (at its fd limit) fail in about a millisecond
    # each: a streak past 1,024, where 2.0 ** streak overflowed, in seconds rather than minutes.
    watcher = _Streaks("retried")
    rt = Runtime()
    rt.register_process(watcher)
    rt.register_service(_Retried())
    rt.boot()
    try:
        (status,) = rt.workers()
        assert status.pid is not None and rt.stats().fork_server_pid is not None
        server = psutil.Process(rt.stats().fork_server_pid)
        soft, hard = server.rlimit(psutil.RLIMIT_NOFILE)
        used = {int(fd) for fd in os.listdir(f"/proc/{server.pid}/fd")}
        # At its fd limit: the descriptors the worker's death frees are not enough for a spawn.
        server.rlimit(psutil.RLIMIT_NOFILE, (min(set(range(len(used) + 1)) - used), hard))
        os.kill(status.pid, signal.SIGKILL)
        reached = watcher.wait_attempt(1040, timeout=180)
        assert not watcher.gave_up, watcher.gave_up
        assert reached >= 1040, f"respawns stopped after {reached} failures in a row"
        server.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        # Still supervised: the next retry makes it, a new process.
        running = rt.wait_for_worker("retried", WorkerState.RUNNING, timeout=60)
        assert running.pid not in (None, status.pid)
    finally:
        rt.shutdown()


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_a_worker_crashing_over_a_thousand_times_in_a_row_is_still_respawned() -> None:
    watcher = _Streaks("dies")
    rt = Runtime()
    rt.register_process(watcher)
    rt.register_service(_DiesAtOnce())
    rt.boot()
    try:
        reached = watcher.wait_attempt(1040, timeout=840)
        assert not watcher.gave_up, watcher.gave_up
        assert reached >= 1040, f"respawns stopped after {reached} failures in a row"
    finally:
        rt.shutdown()


# ---- class 2: the supervisor's own periodic jobs survive their environment ----------------

_WATCHDOG_SCRIPT = r"""
import os, resource, sys, time
from pathlib import Path

from bussdcc import Context, Runtime, Service
from tests._helpers import Recorder, wait_until

FLAG = Path(sys.argv[1])


class Hangs(Service):
    name = "hangs"
    interval = 0.05
    tick_timeout = 1.0
    restart = False

    def tick(self, ctx: Context) -> None:
        if FLAG.exists():
            time.sleep(3600)


def starve() -> list[int]:
    # Nothing new can be opened: every fd below the (lowered) soft limit is taken.
    fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds[-1] + 1, hard))
    return fill()


def fill() -> list[int]:
    held = []
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            return held


rec = Recorder()
rt = Runtime()
rt.register_process(rec)
rt.register_service(Hangs())
rt.boot()
try:
    rec.wait_for("worker.started")
    wait_until(lambda: rt.workers()[0].rss, 20, "a first sample of the worker")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = starve()
    try:
        # Short of fds, the parent closes its control endpoint (which frees some): take those too.
        (pressure,) = rec.wait_for("runtime.fault", lambda e: e.payload.part == "fds", timeout=30)
        deadline = time.monotonic() + 30
        while not rec.of("runtime.fault") or not [e for e in rec.of("runtime.fault") if e.payload.part == "watchdog"]:
            assert time.monotonic() < deadline, rec.names()
            held += fill()
            time.sleep(0.05)
        (fault,) = [e for e in rec.of("runtime.fault") if e.payload.part == "watchdog"]
        time.sleep(1.5)  # several sampling periods, each failing again
        again = rec.of("runtime.fault")
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)
    print("pressure", pressure.payload.kind, flush=True)
    print("fault", fault.payload.kind, fault.payload.error, flush=True)
    print("watchdog faults", sum(1 for e in again if e.payload.part == "watchdog"), flush=True)
    FLAG.touch()
    (hung,) = rec.wait_for("worker.hung", timeout=30)
    print("hung", hung.payload.reason, flush=True)
finally:
    rt.shutdown()
"""


def _python(script: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_cli.env(),
        cwd=_cli.ROOT,
        check=False,
    )


@pytest.mark.timeout(180)
def test_the_watchdog_survives_the_fd_limit_reports_it_once_and_still_finds_hangs(tmp_path: Path) -> None:
    done = _python(_WATCHDOG_SCRIPT, str(tmp_path / "hang"), timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    fault = next(line for line in lines if line.startswith("fault "))
    assert "Too many open files" in fault, fault
    assert "watchdog faults 1" in lines, lines
    assert "pressure fd_pressure" in lines, lines
    assert any(line.startswith("hung hung: tick ran longer") for line in lines), lines


# ---- class 9: the control plane is never starved by spawns stuck in an import ------------

_STUCK_MODULE = """
import os, time
from pathlib import Path

from bussdcc import Service

Path(os.environ["STUCK_MARKS"], __name__).touch()
time.sleep(3600)


class Never(Service):
    name = "never"
"""


def _command(extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``bussdcc ARGS`` with ``extra`` in its environment, run to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bussdcc", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=_cli.env(**extra),
        cwd=_cli.ROOT,
        check=False,
    )


@pytest.mark.timeout(240)
def test_spawns_stuck_in_an_import_starve_nothing_and_shutdown_ends_the_process(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    for i in range(6):
        (tmp_path / f"stuck{i}.py").write_text(_STUCK_MODULE)
    extra = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), _cli.env()["PYTHONPATH"]]),
        "STUCK_MARKS": str(marks),
    }
    run = _cli.Background(["run", "tests.cli_parts:make_runtime", "--name", "starved"], **extra)
    spawns: list[_cli.Background] = []
    try:
        run.wait_line("starved running", err=True)
        for i in range(5):
            args = ["spawn", f"stuck{i}:Never", "--name", f"s{i}", "--set", "start_timeout=3600"]
            spawns.append(_cli.Background(args, **extra))
        # Every one of them is blocked in its import inside the runtime.
        _wait_until(lambda: len(list(marks.iterdir())) == 5, 60, "five imports to block")
        status = _command(extra, "status", "starved", "--json")
        assert status.returncode == 0, status.stderr
        stop = _command(extra, "stop", "beeper")
        assert (stop.returncode, stop.stdout.strip()) == (0, "beeper stopped"), stop.stderr
        start = _command(extra, "start", "beeper")
        assert start.returncode == 0, start.stderr
        # A stuck spawn is bounded by its start_timeout: one line, and nothing added.
        bounded = _command(extra, "spawn", "stuck5:Never", "--name", "s5", "--set", "start_timeout=1")
        assert bounded.returncode == 1
        (line,) = bounded.stderr.splitlines()
        assert "did not finish within start_timeout 1s" in line, line
        names = {w["name"] for w in json.loads(_command(extra, "status", "--json").stdout)["workers"]}
        assert names == {"probe", "beeper"}
        assert all(s.proc.poll() is None for s in spawns)  # still stuck, all along
        done = _command(extra, "shutdown", "starved", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert run.wait(60) == 0, run.err
    finally:
        for spawn in spawns:
            spawn.stop()
        run.stop()


_LOW_LIMIT_RUN = """
import resource, runpy, sys

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
sys.argv = ["bussdcc", "run", "tests.cli_parts:make_runtime", "--name", "crowded"]
runpy.run_module("bussdcc", run_name="__main__")
"""

_STRANGER = """
import socket, sys, time

held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
print("holding", len(held), flush=True)
sys.stdin.read()  # until told to let go
"""


@pytest.mark.timeout(120)
def test_a_stranger_holding_idle_control_connections_cannot_exhaust_the_parents_fds(run_base: Path) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard fd limit ({hard}) leaves no room to raise the soft one")
    runtime = _cli.script(_LOW_LIMIT_RUN)
    stranger: subprocess.Popen[str] | None = None
    try:
        assert runtime.stderr is not None
        line = runtime.stderr.readline()
        assert "crowded running" in line, line
        (run_dir,) = run_base.iterdir()
        stranger = subprocess.Popen(
            [sys.executable, "-c", _STRANGER, str(run_dir / "control.sock"), "1100"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert stranger.stdout is not None
        assert stranger.stdout.readline().strip() == "holding 1100"
        # Connections that never said a word are closed by the parent: its fds come back.
        fds = f"/proc/{runtime.pid}/fd"
        _wait_until(lambda: len(os.listdir(fds)) < 200, 60, "the idle connections to be closed")
        assert runtime.poll() is None
        status = _command({}, "status", "crowded", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["runtime"]["pid"] == runtime.pid
        done = _command({}, "shutdown", "crowded", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert runtime.wait(60) == 0
    finally:
        if stranger is not None:
            stranger.kill()
            stranger.communicate()
        if runtime.poll() is None:
            runtime.kill()
        runtime.communicate()

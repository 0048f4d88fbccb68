"""Fork safety and a lost run directory: the runtime survives what its host does around it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from bussdcc import Context, Device, Runtime, Service, ThreadedRuntime, WorkerState
from bussdcc.cli._client import Client, read_secret
from bussdcc.kernel import protocol as p

from ._helpers import MakeRuntime, Recorder, wait_until

# A program that logs to a file from a thread of its own, in a tight loop, while it
# boots runtimes whose workers log to the same file: the fork at boot is made while
# that thread is inside a write most of the time.
_LOGGING_PROGRAM = textwrap.dedent(
    """
    import logging, os, signal, sys, threading, time
    from bussdcc import Device, Runtime, Service, WorkerState

    LOG = logging.getLogger("app")

    class Dev(Device):
        kind = "dev"
        start_timeout = 5.0
        def connect(self):
            LOG.info("connect %d %s", os.getpid(), "c" * 200)

    class Svc(Service):
        name = "svc"
        interval = 0.01
        start_timeout = 5.0
        def start(self, ctx):
            LOG.info("start %d %s", os.getpid(), "s" * 200)
        def tick(self, ctx):
            LOG.info("tick %d", os.getpid())

    def running(rt, name, other_than=None):
        for w in rt.workers():
            if w.name == name and w.state is WorkerState.RUNNING and w.pid not in (None, other_than):
                return w.pid
        return None

    def main():
        path, rounds = sys.argv[1], int(sys.argv[2])
        LOG.addHandler(logging.FileHandler(path))
        LOG.setLevel(logging.INFO)
        stop = threading.Event()
        def spin():
            while not stop.is_set():
                LOG.info("background %s", "b" * 500)
        threading.Thread(target=spin, name="spinner", daemon=True).start()
        for i in range(rounds):
            rt = Runtime(name="forksafe")
            rt.attach_device(Dev(id="dev"))
            rt.register_service(Svc())
            try:
                rt.boot()
                states = {w.name: w.state.value for w in rt.workers()}
                if states != {"dev": "running", "svc": "running"}:
                    print(f"round {i}: not ready at boot: {states}", flush=True)
                    return 1
                # A respawn is forked from the same fork server: it must come up too.
                old = running(rt, "svc")
                os.kill(old, signal.SIGKILL)
                deadline = time.monotonic() + 30
                while running(rt, "svc", other_than=old) is None:
                    if time.monotonic() > deadline:
                        print(f"round {i}: no respawn: {rt.workers()}", flush=True)
                        return 1
                    time.sleep(0.01)
            finally:
                rt.shutdown()
            print(f"round {i}: ready", flush=True)
        stop.set()
        return 0

    if __name__ == "__main__":
        sys.exit(main())
    """
)


@pytest.mark.timeout(240)
def test_workers_of_a_program_logging_from_a_thread_at_boot_never_deadlock(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(_LOGGING_PROGRAM)
    rounds = 6
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "app.log"), str(rounds)],
        check=False,
        capture_output=True,
        text=True,
        timeout=200,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.stdout.count(": ready") == rounds
    lines = (tmp_path / "app.log").read_text().splitlines()
    # Every worker wrote to the file the thread was writing to (each record also reaches
    # the parent's logging, which writes it there again: count the processes).
    assert len({line.split()[1] for line in lines if line.startswith("connect ")}) == rounds
    assert len({line.split()[1] for line in lines if line.startswith("start ")}) == 2 * rounds


class _Idle(Service):
    name = "idle"
    interval = 3600.0


def _faults(rec: Recorder, part: str) -> list[str]:
    return [e.payload.error for e in rec.of("runtime.fault") if e.payload.part == part]  # type: ignore[attr-defined]


def test_threads_alive_at_boot_are_named_in_a_runtime_fault() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="host-poller", daemon=True)
    thread.start()
    rec = Recorder()
    rt = Runtime(name="threads")
    rt.register_process(rec)
    rt.register_service(_Idle())
    try:
        rt.boot()
        (fault,) = rec.wait_for("runtime.fault", lambda e: e.payload.kind == "threads_at_boot")  # type: ignore[attr-defined]
        assert fault.payload.part == "threads"  # type: ignore[attr-defined]
        error: str = fault.payload.error  # type: ignore[attr-defined]
        assert "'host-poller'" in error
        assert "boot the runtime before starting threads" in error.lower()
        # The runtime's own threads (this one's, running now) are not the host's doing.
        other = Runtime(name="threads2")
        rec2 = Recorder()
        other.register_process(rec2)
        with other:
            (fault2,) = rec2.wait_for("runtime.fault")
            assert "'host-poller'" in fault2.payload.error  # type: ignore[attr-defined]
            assert "bussdcc-" not in fault2.payload.error  # type: ignore[attr-defined]
    finally:
        rt.shutdown()
        release.set()
        thread.join()


_HELD = threading.Lock()


class _NeedsTheLock(Service):
    """Takes a lock at start that a thread of the host held when the fork server was made."""

    name = "needs-lock"
    interval = 3600.0
    start_timeout = 1.0
    restart = False

    def start(self, ctx: Context) -> None:
        with _HELD:
            pass


def test_a_worker_hung_at_start_by_a_lock_held_at_boot_names_the_likely_cause() -> None:
    taken = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with _HELD:
            taken.set()
            release.wait()

    thread = threading.Thread(target=hold, name="lock-holder", daemon=True)
    thread.start()
    taken.wait()
    rec = Recorder()
    rt = Runtime(name="hung")
    rt.register_process(rec)
    rt.register_service(_NeedsTheLock())
    try:
        rt.boot()
        (exited,) = rec.wait_for("worker.exited", timeout=30)
        reason: str = exited.payload.reason  # type: ignore[attr-defined]
        assert reason.startswith("start timeout")
        assert "1 other thread was running when the fork server was made at boot" in reason
        assert "boot the runtime before starting threads" in reason
    finally:
        rt.shutdown()
        release.set()
        thread.join()


class _Ticker(Service):
    name = "ticker"
    interval = 0.05
    start_timeout = 5.0


class _Probe(Device):
    kind = "probe"
    start_timeout = 5.0


def _running_pid(rt: Runtime, name: str, other_than: int | None = None) -> int | None:
    for w in rt.workers():
        if w.name == name and w.state is WorkerState.RUNNING and w.pid not in (None, other_than):
            return w.pid
    return None


@pytest.mark.timeout(90)
def test_a_run_directory_deleted_under_a_live_runtime_is_reported_and_made_again(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("lostdir", _Probe(id="probe"), _Ticker())
    run_dir = rt.run_dir
    assert run_dir is not None
    secret = read_secret(run_dir)
    old = wait_until(lambda: _running_pid(rt, "ticker"), what="the ticker running")
    probe = wait_until(lambda: _running_pid(rt, "probe"), what="the probe running")
    assert old is not None
    shutil.rmtree(run_dir)
    os.kill(old, signal.SIGKILL)
    (fault,) = rec.wait_for("runtime.fault", lambda e: e.payload.part == "run_dir", timeout=30)  # type: ignore[attr-defined]
    assert fault.payload.kind == "run_dir_lost"  # type: ignore[attr-defined]
    error: str = fault.payload.error  # type: ignore[attr-defined]
    assert str(run_dir) in error
    assert "slots file cannot be restored" in error
    # The respawn connects: a new process, ready.
    new = wait_until(lambda: _running_pid(rt, "ticker", other_than=old), timeout=30, what="the ticker back")
    assert new != old
    exited = rec.wait_for("worker.exited", lambda e: e.payload.pid == old)  # type: ignore[attr-defined]
    assert "killed by SIGKILL" in exited[0].payload.reason  # type: ignore[attr-defined]
    # The worker that was connected all along was never disturbed.
    assert _running_pid(rt, "probe") == probe
    # The control endpoint answers again, with the secret its clients already hold.
    assert os.stat(run_dir).st_mode & 0o777 == 0o700
    with Client(run_dir) as client:
        assert client.secret == secret
        reply = client.call(p.StatusRequest(secret), timeout=30)
    assert isinstance(reply, p.StatusReply)
    assert len(rec.of("runtime.fault")) == 1  # reported once
    rt.shutdown()
    assert not run_dir.exists()


class _Once(Service):
    name = "once"
    interval = 3600.0
    start_timeout = 1.0
    restart = "transient"


@pytest.mark.timeout(90)
def test_a_start_timeout_while_the_run_directory_cannot_be_made_again_names_that_cause(
    make_runtime: MakeRuntime,
) -> None:
    rt, rec = make_runtime("nodir", _Once())
    run_dir = rt.run_dir
    assert run_dir is not None
    pid = wait_until(lambda: _running_pid(rt, "once"), what="the service running")
    assert pid is not None
    shutil.rmtree(run_dir)
    run_dir.write_text("not a directory")  # in the way of making it again
    try:
        os.kill(pid, signal.SIGKILL)
        (fault,) = rec.wait_for("runtime.fault", lambda e: e.payload.part == "run_dir", timeout=30)  # type: ignore[attr-defined]
        assert "cannot be made again" in fault.payload.error  # type: ignore[attr-defined]
        timed_out = rec.wait_for(
            "worker.exited",
            lambda e: e.payload.reason.startswith("start timeout"),  # type: ignore[attr-defined]
            timeout=30,
        )
        reason: str = timed_out[0].payload.reason  # type: ignore[attr-defined]
        assert f"the run directory {run_dir} is gone" in reason
        assert len(rec.of("runtime.fault")) == 1  # reported once, though every look fails
    finally:
        run_dir.unlink()


def test_a_threaded_runtime_is_not_told_of_the_thread_waiting_for_its_boot() -> None:
    rec = Recorder()
    rt = ThreadedRuntime(name="threaded")
    rt.register_process(rec)
    rt.register_service(_Idle())
    rt.start(timeout=30)
    try:
        rec.wait_for("service.started")
        assert rec.of("runtime.fault") == []
    finally:
        rt.stop(timeout=30)

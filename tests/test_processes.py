"""Whole programs in subprocesses: the Quick Start, SignalRuntime, and a parent killed with SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from bussdcc import Context, Runtime, Service, ThreadedRuntime

from ._helpers import Recorder, Seq, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid has exited (a zombie counts: it runs nothing); return the survivors."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        still = []
        for pid in alive:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
            except psutil.NoSuchProcess:
                pass
        alive = still
        if alive:
            time.sleep(0.01)
    return alive


SEED_QUICK_START = """
from bussdcc import Runtime, Device, Process, Service, message

class MySensor(Device):
    kind = "sensor"

    def connect(self):
        print("Sensor online")

    def disconnect(self):
        print("Sensor offline")


class Logger(Process):
    name = "logger"

    def handle_event(self, ctx, evt):
        print(evt.payload.name, evt.payload.to_dict())


class Heartbeat(Service):
    name = "heartbeat"
    interval = 2.0

    def tick(self, ctx):
        ctx.emit(message.SystemSignal(signal=0, action="heartbeat"))


rt = Runtime()
rt.attach_device(MySensor(id="sensor-1"))
rt.register_process(Logger())
rt.register_service(Heartbeat())

rt.boot()
"""


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_quickstart_is_the_seed_verbatim() -> None:
    ours = (ROOT / "examples" / "quickstart.py").read_text()
    assert _lines(ours) == _lines(SEED_QUICK_START)
    seed = ROOT.parent / "shared" / "SEED-bussdcc-0.42-README.txt"
    if seed.exists():  # beside a checkout of the project, the seed itself
        assert "\n".join(_lines(SEED_QUICK_START)) in "\n".join(_lines(seed.read_text()))


def test_verbatim_quickstart_runs_in_two_workers_and_exits_clean() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Sensor online" in out and "Sensor offline" in out
    assert "device.attached {'device': 'sensor-1', 'kind': 'sensor'}" in out
    assert "system.signal {'signal': 0, 'action': 'heartbeat'}" in out
    for name in ["runtime.booting", "runtime.booted", "runtime.shutting_down", "runtime.shutdown"]:
        assert re.search(rf"^{re.escape(name)} ", out, re.M), name
    pids = {
        m["worker"]: int(m["pid"])
        for m in re.finditer(r"worker.started \{'worker': '(?P<worker>[^']+)', 'role': '\w+', 'pid': (?P<pid>\d+)", out)
    }
    assert set(pids) == {"sensor-1", "heartbeat"}
    assert len(set(pids.values())) == 2 and proc.returncode == 0
    assert not _gone(list(pids.values()), 30), "workers outlived the script"
    assert proc.stderr == ""


SIGNAL_SCRIPT = textwrap.dedent(
    """
    import sys
    from bussdcc import Device, Process, Service, SignalRuntime

    class Printer(Process):
        name = "printer"
        def handle_event(self, ctx, evt):
            print(evt.payload.name, evt.payload.to_dict(), flush=True)

    class Idle(Service):
        name = "idle"
        interval = 3600

    class Dev(Device):
        kind = "dev"

    rt = SignalRuntime(name="sigtest")
    rt.register_process(Printer())
    rt.register_service(Idle())
    rt.attach_device(Dev(id="dev"))
    rt.boot()
    print("READY", *[w.pid for w in rt.workers()], flush=True)
    rt.run()
    print("EXITED", rt.halt_reason, flush=True)
    """
)


def _start_script(tmp_path: Path, source: str) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "app.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY"):
            return proc, [int(x) for x in line.split()[1:]]
    raise AssertionError(f"script never became ready (exit {proc.wait()})")


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _read_until(proc: subprocess.Popen[str], needle: str) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed; got {lines}")


def test_signal_runtime_turns_signals_into_messages_and_shuts_down(tmp_path: Path) -> None:
    proc, pids = _start_script(tmp_path, SIGNAL_SCRIPT)
    try:
        proc.send_signal(signal.SIGHUP)
        _read_until(proc, "system.reload {'plan': None, 'error': None}")  # no system file: nothing planned
        proc.send_signal(signal.SIGUSR1)
        _read_until(proc, f"system.signal {{'signal': {int(signal.SIGUSR1)}, 'action': 'user1'}}")
        proc.send_signal(signal.SIGUSR2)
        _read_until(proc, "'action': 'user2'")
        proc.send_signal(signal.SIGTERM)
        rest = _read_until(proc, "EXITED")
        assert proc.wait(timeout=20) == 0
    finally:
        _end(proc)
    text = "".join(rest)
    assert "service.stopped" in text and "device.detached" in text and "runtime.shutdown" in text
    assert "EXITED Terminated" in text
    assert not _gone(pids, 30)


def test_sigint_shuts_a_signal_runtime_down(tmp_path: Path) -> None:
    proc, pids = _start_script(tmp_path, SIGNAL_SCRIPT)
    try:
        proc.send_signal(signal.SIGINT)
        text = "".join(_read_until(proc, "EXITED"))
        assert proc.wait(timeout=20) == 0
    finally:
        _end(proc)
    assert "runtime.shutdown {'reason': 'Interrupt'}" in text
    assert not _gone(pids, 30)


APP_FORKS = """
    import os, time
    helper = os.fork()  # the application forks after boot: the helper inherits the parent's fds
    if helper == 0:
        time.sleep(30)
        os._exit(0)
    print("READY", *[w.pid for w in rt.workers()], flush=True)
"""


WORKER_HELPERS = """
    def start(self, ctx):
        import subprocess
        # A vendor binary, say, never waited for: one in the worker's group, one in a session of its own.
        for key, own in (("grouped", False), ("detached", True)):
            ctx.state.set(f"helper.{key}", subprocess.Popen(["sleep", "1000"], start_new_session=own).pid)
"""
HELPERS_READY = """
    import threading
    while rt.state.get("helper.grouped") is None or rt.state.get("helper.detached") is None:
        threading.Event().wait(0.01)
    print("READY", *[w.pid for w in rt.workers()], flush=True)
    print("HELPERS", rt.state.get("helper.grouped"), rt.state.get("helper.detached"), flush=True)
"""


@pytest.mark.parametrize("variant", ["idle", "busy", "app-forks", "worker-helpers"])
def test_workers_and_their_helpers_die_with_a_sigkilled_parent(tmp_path: Path, variant: str, run_base: Path) -> None:
    source = SIGNAL_SCRIPT
    ready = '    print("READY", *[w.pid for w in rt.workers()], flush=True)\n'
    if variant == "busy":
        source = source.replace("interval = 3600", "interval = 0.001")
    if variant == "app-forks":
        source = source.replace(ready.strip(), textwrap.dedent(APP_FORKS).strip())
    if variant == "worker-helpers":
        source = source.replace(
            "    interval = 3600\n", "    interval = 3600\n" + textwrap.indent(textwrap.dedent(WORKER_HELPERS), "    ")
        )
        source = source.replace(ready.strip(), textwrap.dedent(HELPERS_READY).strip())
    proc, pids = _start_script(tmp_path, source)
    children = [c.pid for c in psutil.Process(proc.pid).children()]
    fork_server = [pid for pid in children if pid not in pids][:1]
    app_children = [pid for pid in children if pid not in pids][1:]
    assert len(pids) == 2 and len(fork_server) == 1 and len(app_children) == (variant == "app-forks")
    worker_helpers: list[int] = []
    if variant == "worker-helpers":
        assert proc.stdout is not None
        worker_helpers = [int(pid) for pid in proc.stdout.readline().split()[1:]]
        assert len(worker_helpers) == 2 and all(psutil.pid_exists(pid) for pid in worker_helpers)
    _end(proc)
    # However slow the machine: what matters is that they go by themselves, not how fast.
    survivors = _gone(pids + fork_server + worker_helpers, 60.0)
    for pid in app_children:  # the application's own child is the application's business
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"still alive after the parent's SIGKILL: {survivors}"
    # The orphaned fork server removes the run directory last; it is no child of ours to wait for.
    wait_until(lambda: not any(run_base.iterdir()), timeout=30, what="the fork server to remove the run directory")


class Emitter(Service):
    name = "emitter"
    interval = 0.01

    def tick(self, ctx: Context) -> None:
        ctx.emit(Seq(i=0))


def test_threaded_runtime_runs_in_a_background_thread() -> None:
    rec = Recorder()
    rt = ThreadedRuntime(name="threaded")
    rt.register_process(rec)
    rt.register_service(Emitter())
    rt.start(timeout=20)
    try:
        assert rt.booted
        rec.wait_for("test.seq", count=3)
    finally:
        rt.stop(timeout=20)
    assert not rt.booted and rec.names()[-1] == "runtime.shutdown"


def test_runtime_run_returns_after_shutdown_from_another_thread() -> None:
    import threading

    rec = Recorder()
    rt = Runtime(name="runblock")
    rt.register_process(rec)
    rt.register_service(Emitter())

    def stopper() -> None:
        rec.wait_for("test.seq")
        rt.shutdown("done")

    t = threading.Thread(target=stopper)
    t.start()
    rt.run()
    t.join()
    assert rec.of("runtime.shutdown")[0].payload.to_dict() == {"reason": "done"}

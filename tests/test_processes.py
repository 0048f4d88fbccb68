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

from ._helpers import Recorder, Seq

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
    assert not _gone(list(pids.values()), 2), "workers outlived the script"
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
        _read_until(proc, "system.reload {}")
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
    assert not _gone(pids, 2)


def test_sigint_shuts_a_signal_runtime_down(tmp_path: Path) -> None:
    proc, pids = _start_script(tmp_path, SIGNAL_SCRIPT)
    try:
        proc.send_signal(signal.SIGINT)
        text = "".join(_read_until(proc, "EXITED"))
        assert proc.wait(timeout=20) == 0
    finally:
        _end(proc)
    assert "runtime.shutdown {'reason': 'Interrupt'}" in text
    assert not _gone(pids, 2)


APP_FORKS = """
    import os, time
    helper = os.fork()  # the application forks after boot: the helper inherits the parent's fds
    if helper == 0:
        time.sleep(30)
        os._exit(0)
    print("READY", *[w.pid for w in rt.workers()], flush=True)
"""


@pytest.mark.parametrize("variant", ["idle", "busy", "app-forks"])
def test_workers_die_within_two_seconds_of_a_sigkilled_parent(tmp_path: Path, variant: str, run_base: Path) -> None:
    source = SIGNAL_SCRIPT
    if variant == "busy":
        source = source.replace("interval = 3600", "interval = 0.001")
    if variant == "app-forks":
        ready = '    print("READY", *[w.pid for w in rt.workers()], flush=True)\n'
        source = source.replace(ready.strip(), textwrap.dedent(APP_FORKS).strip().replace("\n", "\n"))
    proc, pids = _start_script(tmp_path, source)
    children = [c.pid for c in psutil.Process(proc.pid).children()]
    fork_server = [pid for pid in children if pid not in pids][:1]
    helpers = [pid for pid in children if pid not in pids][1:]
    assert len(pids) == 2 and len(fork_server) == 1 and len(helpers) == (variant == "app-forks")
    _end(proc)
    t0 = time.monotonic()
    survivors = _gone(pids + fork_server, 2.0)
    for pid in helpers:  # the application's own child is the application's business
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"still alive 2 s after the parent's SIGKILL: {survivors}"
    assert not list(run_base.iterdir()), "the fork server removes the run directory of a killed parent"
    print(f"all workers gone {time.monotonic() - t0:.3f}s after the parent's SIGKILL")


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

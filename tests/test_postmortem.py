"""Post-mortems: per-worker log files, the last output lines of a crash, a hung worker's stacks."""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bussdcc import Context, Device, Event, Message, Runtime, Service, WorkerState, message
from bussdcc.errors import BootError, ConfigError
from bussdcc.kernel._postmortem import STACKS_SIGNAL, log_file
from bussdcc.supervisor import _postmortem

from ._helpers import MakeRuntime, Recorder, wait_until


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def fds_into(directory: Path) -> list[str]:
    """The files under ``directory`` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + "/"):
            found.append(target)
    return found


class Talker(Service):
    """Prints ``count`` numbered lines (``width`` wide), logs a warning, writes to stderr, at start."""

    interval = 3600.0

    def __init__(self, name: str, count: int = 3, width: int = 0) -> None:
        self.name = name
        self.count = count
        self.width = width

    def start(self, ctx: Context) -> None:
        for i in range(self.count):
            print(f"line {i:05d}{' ' + 'x' * self.width if self.width else ''}")
        logging.getLogger("talker.driver").warning("calibrated %s", "twice")
        print("to stderr", file=sys.stderr)


LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(\d+)\] (.*)$")


def test_each_workers_output_goes_to_its_own_log_file_and_is_closed_at_shutdown(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    rt, _ = make_runtime("logfiles", Talker("alpha"), Talker("beta/2", count=2), log_dir=logs)
    alpha, beta = logs / "alpha.log", log_file(logs, "beta/2")
    assert beta.parent == logs and beta.name.startswith("beta_2-")  # a name that is no file name gets a hash
    wait_until(lambda: "to stderr" in read(alpha) and "to stderr" in read(beta), what="both workers' output")
    pids = {w.name: w.pid for w in rt.workers()}
    parsed = [LINE.match(line) for line in read(alpha).splitlines()]
    assert all(parsed), read(alpha)
    assert {m.group(1) for m in parsed if m} == {str(pids["alpha"])}
    said = [m.group(2) for m in parsed if m]
    assert said[:3] == ["stdout: line 00000", "stdout: line 00001", "stdout: line 00002"]
    assert "WARNING talker.driver: calibrated twice" in said and "stderr: to stderr" in said
    assert "line 00002" not in read(beta) and f"[{pids['beta/2']}] stdout: line 00001" in read(beta)
    assert (logs.stat().st_mode & 0o777) == 0o700
    rt.shutdown()
    # How each ended is the last line of its file, and nothing stays open.
    assert read(alpha).splitlines()[-1].endswith(f"[{pids['alpha']}] exited: stopped")
    assert fds_into(logs) == []


def test_log_files_rotate_at_their_size_keeping_the_newest(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    make_runtime("rotate", Talker("chatty", count=300), log_dir=logs, log_max_bytes=1024, log_backups=2)
    current = logs / "chatty.log"
    wait_until(lambda: "to stderr" in read(current), what="the last line in the current file")
    files = [logs / "chatty.log.2", logs / "chatty.log.1", current]
    assert all(f.exists() for f in files) and not (logs / "chatty.log.3").exists()
    assert all(f.stat().st_size < 1024 for f in files)
    # Oldest to newest, the files hold an unbroken run of the lines, up to the last.
    numbers = [int(n) for f in files for n in re.findall(r"stdout: line (\d+)", read(f))]
    assert numbers[-1] == 299 and numbers == list(range(numbers[0], 300)) and numbers[0] > 0


def test_log_files_open_at_once_are_bounded(
    make_runtime: MakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_postmortem, "MAX_OPEN", 2)
    logs = tmp_path / "logs"
    names = [f"w{i}" for i in range(5)]
    rt, _ = make_runtime("fewfds", *(Talker(name) for name in names), log_dir=logs)
    wait_until(lambda: all("to stderr" in read(logs / f"{n}.log") for n in names), what="every worker's lines")
    assert len(fds_into(logs)) <= 2
    rt.shutdown()
    assert fds_into(logs) == []


def test_a_log_directory_that_cannot_be_made_fails_the_boot_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rt = Runtime(name="nologs", log_dir=blocker)
    with pytest.raises(BootError, match=r"^cannot create the log directory .*/file: ") as info:
        rt.boot()
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^log_max_bytes must be an int >= 1024, not 0$"):
        Runtime(name="nologs", log_dir=tmp_path, log_max_bytes=0)
    with pytest.raises(ConfigError, match=r"^log_backups must be an int >= 1, not 0$"):
        Runtime(name="nologs", log_dir=tmp_path, log_backups=0)


# ---- the last lines of a crash ----------------------------------------------------------------


class Crasher(Service):
    """Prints ``count`` lines (each ``width`` wide) at start, then dies ``how``."""

    name = "crasher"
    interval = 3600.0
    restart = False

    def __init__(self, how: str = "exit", count: int = 3, width: int = 0) -> None:
        self.how = how
        self.count = count
        self.width = width

    def start(self, ctx: Context) -> None:
        for i in range(self.count):
            print(f"line {i}" + "x" * self.width)
        sys.stdout.flush()
        if self.how == "exit":
            os._exit(7)
        ctypes.string_at(0)  # a segfault


def exited(rec: Recorder) -> message.WorkerExited:
    (evt,) = rec.wait_for("worker.exited")
    assert isinstance(evt.payload, message.WorkerExited)
    return evt.payload


def test_worker_exited_of_a_crash_carries_its_last_output_lines(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    _, rec = make_runtime("lastwords", Crasher("exit", count=150), log_dir=tmp_path / "logs")
    end = exited(rec)
    assert end.abnormal and end.cause == "exit_code" and end.exit_code == 7
    assert end.output == tuple(f"line {i}" for i in range(150 - _postmortem.LAST_LINES, 150))
    assert end.to_dict()["output"] == end.output


def test_the_last_lines_of_a_segfault_include_what_faulthandler_said(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("segv", Crasher("segv"))
    end = exited(rec)
    assert end.signal == "SIGSEGV" and end.abnormal
    assert "Fatal Python error: Segmentation fault" in end.output
    assert any(line.strip().endswith("in start") for line in end.output), end.output


def test_the_last_lines_are_bounded_in_characters(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("longwords", Crasher("exit", count=40, width=1000))
    end = exited(rec)
    assert sum(len(line) for line in end.output) <= _postmortem.LAST_CHARS
    assert 1 <= len(end.output) < 20 and end.output[-1] == "line 39" + "x" * 1000


def test_a_clean_stop_carries_no_output(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("cleanstop", Talker("quiet"))
    rt.shutdown()
    end = exited(rec)
    assert not end.abnormal and end.output == ()


# ---- a hung worker's stacks --------------------------------------------------------------------


def spin_in_python() -> None:
    while True:
        pass


def hold_the_gil_in_c() -> None:
    libc = ctypes.PyDLL(None)  # unlike CDLL, PyDLL keeps the GIL held during the call
    while True:
        libc.pause()  # sleeps in C for ever (a signal handler only makes it return, to sleep again)


class Hanger(Service):
    name = "hanger"
    interval = 0.05
    restart = False
    heartbeat_interval = 0.1

    def __init__(self, how: str) -> None:
        self.how = how
        if how == "gil":
            self.tick_timeout = 60.0  # only the stopped heartbeat can tell
            self.heartbeat_timeout = 1.0
        else:
            self.tick_timeout = 0.5
            self.heartbeat_timeout = 30.0

    def start(self, ctx: Context) -> None:
        if self.how == "deaf":  # takes the stack dump's signal away
            faulthandler.unregister(STACKS_SIGNAL)
            signal.signal(STACKS_SIGNAL, signal.SIG_IGN)

    def tick(self, ctx: Context) -> None:
        if self.how == "python":
            spin_in_python()
        elif self.how == "gil":
            hold_the_gil_in_c()
        else:
            time.sleep(3600)


def hung_then_exited(rec: Recorder) -> tuple[message.WorkerHung, message.WorkerExited]:
    end = exited(rec)
    (hung,) = rec.of("worker.hung")
    assert isinstance(hung.payload, message.WorkerHung)
    names = rec.names()
    assert names.index("worker.hung") < names.index("worker.exited")
    assert end.cause == "hung" and end.signal == "SIGKILL"
    return hung.payload, end


def test_a_worker_hung_in_python_is_killed_with_every_threads_stack(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    rt, rec = make_runtime("hungpy", Hanger("python"), log_dir=logs)
    run_dir = rt.run_dir
    assert run_dir is not None
    hung, _ = hung_then_exited(rec)
    assert hung.reason == "hung: tick ran longer than 0.5s"
    stacks = hung.stacks
    assert "(most recent call first)" in stacks
    assert re.search(r'File ".*test_postmortem\.py", line \d+ in spin_in_python', stacks), stacks
    assert re.search(r"line \d+ in tick", stacks)
    assert "in _beat" in stacks  # the heartbeat thread: every thread is there
    assert not list(run_dir.glob(f"stacks.{hung.pid}.*"))  # gone with the worker
    # The log file says it too.
    wait_until(lambda: f"[{hung.pid}] exited: hung" in read(logs / "hanger.log"), what="the exit in the log")
    text = read(logs / "hanger.log")
    assert f"[{hung.pid}] hung: tick ran longer than 0.5s; stacks:" in text and "in spin_in_python" in text


def test_a_worker_stuck_in_c_holding_the_gil_still_gives_its_stacks(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("hunggil", Hanger("gil"))
    hung, _ = hung_then_exited(rec)
    # The tick deadline is a minute away: only a held GIL stops the heartbeat thread this soon.
    assert hung.reason.startswith("hung: no heartbeat for"), hung.reason
    assert re.search(r'File ".*test_postmortem\.py", line \d+ in hold_the_gil_in_c', hung.stacks), hung.stacks
    assert "in _beat" in hung.stacks


def test_a_worker_that_gives_no_stacks_is_killed_all_the_same(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("hungdeaf", Hanger("deaf"))
    hung, end = hung_then_exited(rec)
    assert hung.reason == "hung: tick ran longer than 0.5s" and hung.stacks == ""
    assert end.reason.startswith("hung: tick ran longer than 0.5s")


class WokenByTheDump(Device):
    """Its connect waits for any signal: the stack dump's wakes it, and it says Ready just before it dies."""

    kind = "woken"
    start_timeout = 0.5
    restart = False

    def connect(self) -> None:
        ctypes.CDLL(None).pause()


def test_a_hung_worker_that_comes_back_while_its_stacks_are_taken_is_still_killed(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("woken", WokenByTheDump(id="plc"))
    hung, _ = hung_then_exited(rec)
    assert hung.reason == "hung: connect ran longer than start_timeout 0.5s"
    assert re.search(r"line \d+ in connect", hung.stacks), hung.stacks
    assert "worker.started" not in rec.names() and "device.attached" not in rec.names()
    assert [w.state for w in rt.workers()] == [WorkerState.FAILED]


# ---- when the log files cannot keep up, or be written -------------------------------------------


@dataclass(slots=True, frozen=True)
class Speak(Message):
    """Asks a Speaker to print ``count`` lines."""

    name = "test.speak"
    count: int


class Speaker(Service):
    """Prints numbered lines when asked."""

    name = "speaker"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Speak):
            for i in range(evt.payload.count):
                print(f"spoken {i}")


def test_a_log_file_that_cannot_be_written_is_one_fault_and_the_runtime_goes_on(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    rt, rec = make_runtime("unwritable", Speaker(), log_dir=logs)
    logs.rmdir()
    logs.write_text("not a directory")  # where the file should be made, it cannot be
    rt.emit(Speak(3))
    rt.emit(Speak(3))
    (fault,) = rec.wait_for("runtime.fault", lambda e: e.payload.to_dict()["part"] == "logs")
    assert fault.payload.to_dict()["kind"] == "write_failed"
    assert "cannot write" in fault.payload.to_dict()["error"] and "speaker.log" in fault.payload.to_dict()["error"]
    # The directory is back: writing works again, and the runtime never stopped.
    logs.unlink()
    logs.mkdir()
    rt.emit(Speak(2))
    wait_until(lambda: "stdout: spoken 1" in read(logs / "speaker.log"), what="writing to work again")
    assert [f for f in rec.of("runtime.fault") if f.payload.to_dict()["part"] == "logs"] == [fault] and rt.booted


def test_output_the_log_writer_cannot_take_in_time_is_dropped_and_counted_in_the_file(
    make_runtime: MakeRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that stops answering, for a while: the writer waits on its first write.
    monkeypatch.setattr(_postmortem, "LOG_BYTES", 16 * 1024)
    disk = threading.Event()
    emit = _postmortem._FileHandler.emit

    def slow_emit(self: _postmortem._FileHandler, record: logging.LogRecord) -> None:
        disk.wait(30)
        emit(self, record)

    monkeypatch.setattr(_postmortem._FileHandler, "emit", slow_emit)
    logs = tmp_path / "logs"
    try:
        rt, _ = make_runtime("slowdisk", Speaker(), log_dir=logs)
        rt.emit(Speak(2000))  # with their overhead, far more than the writer may hold
        wait_until(lambda: _dropped(rt) > 0, what="output to be dropped")
    finally:
        disk.set()
    rt.shutdown()
    text = read(logs / "speaker.log")
    dropped = re.findall(r"\((\d+) lines dropped: the log writer was behind\)", text)
    kept = re.findall(r"stdout: spoken (\d+)", text)
    assert dropped and sum(int(n) for n in dropped) + len(kept) == 2000
    assert text.splitlines()[-1].endswith("exited: stopped")  # what came after the drops is there


def _dropped(rt: Runtime) -> int:
    parts = rt._parts
    logs = parts.supervisor.postmortem.logs if parts is not None else None
    return logs.dropped if logs is not None else 0

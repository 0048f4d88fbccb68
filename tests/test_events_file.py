"""``bussdcc events --file``: a recording read with the live command's filters and output, finished or cut short."""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
from pathlib import Path

import pytest
from mcap.exceptions import EndOfFile
from mcap.reader import make_reader
from mcap.records import Message as McapMessage
from mcap.stream_reader import StreamReader

from bussdcc import Context, Event, Runtime, Service, Severity, message
from bussdcc.kernel._readback import RecordedFile

from ._cli import bussdcc, script
from ._helpers import Recorder, Seq, wait_until
from ._recordings import McapRecorder, recording_of

T0 = _dt.datetime(2026, 11, 24, 23, 20, 14, 114000, tzinfo=_dt.UTC)


def _at(ms: int) -> _dt.datetime:
    return T0 + _dt.timedelta(milliseconds=ms)


def _write(path: Path, *, finish: bool = True, chunked: bool = False) -> Path:
    """A recording of a small run: lifecycle, readings from a worker, a warning, an error, worker output."""
    rec = McapRecorder(path, chunked=chunked, chunk_size=512)
    rec.message(message.RuntimeBooting(version="0.1.0"), time=_at(0))
    rec.message(message.WorkerStarted(worker="sensor-1", role="device", pid=28265, incarnation=2), time=_at(1))
    for i in range(30):
        rec.message(Seq(i=i), source="sensor-1", worker="sensor-1", incarnation=2, time=_at(10 + i))
        if i == 12:
            rec.message(message.RuntimeFault(part="fds", kind="fd_pressure", error="x"), time=_at(23))
            rec.log_line("sensor-1", "driver says hi", stream="stderr")
        if i == 20:
            evt = Event(Seq(i=i), _at(30), "sensor-1")
            rec.message(message.ProcessError(process="logger", error="boom", evt=evt), time=_at(31))
    rec.message(message.RuntimeShutdown(reason="requested"), time=_at(100))
    if finish:
        rec.close()
    else:
        rec.abandon()
    return path


def _cut(full: Path, size: int, tmp_path: Path) -> Path:
    cut = tmp_path / f"cut-{size}.mcap"
    cut.write_bytes(full.read_bytes()[:size])
    return cut


def events(*args: str) -> list[str]:
    done = bussdcc("events", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_finished_recording_is_shown_as_the_live_command_shows_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "run.mcap")
    with path.open("rb") as f:  # a finished file: mcap's indexed reader reads it
        assert make_reader(f).get_summary() is not None
    lines = events("--file", str(path))
    assert len(lines) == 20  # the last 20, as live
    assert lines[-1] == '2026-11-24T23:20:14.214Z INFO     runtime.shutdown [runtime] {"reason": "requested"}'
    assert lines[-2] == '2026-11-24T23:20:14.153Z INFO     test.seq [sensor-1] {"i": 29, "pad": ""}'
    every = events("--file", str(path), "-n", "all")
    assert len(every) == 2 + 30 + 1 + 1 + 1 + 1
    assert every[0] == '2026-11-24T23:20:14.114Z INFO     runtime.booting [runtime] {"version": "0.1.0"}'
    output = next(line for line in every if "worker.output" in line)
    assert output.split(" ", 1)[1] == (
        'WARNING  worker.output [sensor-1] {"worker": "sensor-1", "stream": "stderr", "line": "driver says hi"}'
    )
    error = next(line for line in every if "process.error" in line)
    assert "ERROR    process.error [runtime]" in error and "Event(Seq(i=20" in error


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "crash-cut"])
def test_each_filter_and_json_on_finished_and_cut_files(tmp_path: Path, finished: bool) -> None:
    path = _write(tmp_path / "run.mcap", finish=finished)
    if not finished:
        # Cut inside the last record, as a killed recorder leaves a file: the shutdown is lost.
        path = _cut(path, len(path.read_bytes()) - 20, tmp_path)
    seqs = events("--file", str(path), "-n", "all", "--name", "test.*", "--json")
    records = [json.loads(line) for line in seqs]
    assert {r["name"] for r in records} == {"test.seq"} and records[0]["payload"] == {"i": 0, "pad": ""}
    assert records[0] == {
        "time": "2026-11-24T23:20:14.124Z",
        "name": "test.seq",
        "severity": "INFO",
        "source": "sensor-1",
        "payload": {"i": 0, "pad": ""},
    }
    assert records[-1]["payload"]["i"] == 29
    assert [r["payload"]["i"] for r in records] == list(range(len(records)))
    three = [json.loads(line) for line in events("--file", str(path), "-n", "3", "--name", "test.seq", "--json")]
    assert [r["payload"]["i"] for r in three] == [r["payload"]["i"] for r in records[-3:]]
    warnings = events("--file", str(path), "--severity", "WARNING")
    assert [line.split()[1:3] for line in warnings] == [
        ["ERROR", "runtime.fault"],
        ["WARNING", "worker.output"],
        ["ERROR", "process.error"],
    ]
    errors = [json.loads(line) for line in events("--file", str(path), "--severity", "ERROR", "--json")]
    assert [(r["name"], r["payload"].get("process"), r["payload"]["error"]) for r in errors] == [
        ("runtime.fault", None, "x"),
        ("process.error", "logger", "boom"),
    ]
    done = bussdcc("events", "--file", str(path), "-n", "1", "--name", "runtime.*")
    assert done.returncode == 0
    if finished:
        assert "runtime.shutdown" in done.stdout and done.stderr == ""
    else:
        assert "runtime.fault" in done.stdout  # the last one the file holds whole
        assert done.stderr.startswith(f"-- {path} was not finished")


def test_every_cut_of_a_file_reads_a_prefix_of_it_and_never_fails(tmp_path: Path) -> None:
    full = _write(tmp_path / "run.mcap", finish=False)
    whole = [(r.topic, r.data) for r in RecordedFile(full)]
    assert len(whole) == 36
    data = full.read_bytes()
    for size in range(0, len(data) + 1, 7):
        cut = tmp_path / "cut.mcap"
        cut.write_bytes(data[:size])
        recording = RecordedFile(cut)
        got = [(r.topic, r.data) for r in recording]
        assert got == whole[: len(got)], size
        assert recording.truncated or not recording.finished
    # mcap's own stream reader reads the same messages, then runs out where the footer should be.
    seen = 0
    with full.open("rb") as f, pytest.raises(EndOfFile):
        for record in StreamReader(f, skip_magic=False).records:
            seen += isinstance(record, McapMessage)
    assert seen == len(whole)


def test_a_chunked_file_without_its_summary_gives_its_whole_chunks(tmp_path: Path) -> None:
    path = tmp_path / "chunked.mcap"
    rec = McapRecorder(path, chunked=True, chunk_size=2048)
    for i in range(100):
        rec.message(Seq(i=i), source="w", worker="w")
    rec.abandon()
    got = [json.loads(r.data)["i"] for r in RecordedFile(path)]
    assert 0 < len(got) < 100  # the last, open chunk was never written
    assert got == list(range(len(got)))
    finished = _write(tmp_path / "chunked-done.mcap", chunked=True)
    assert len(list(RecordedFile(finished))) == 36


KILLED_WRITER = """
import sys, time
sys.path.insert(0, "tests")
from tests._recordings import McapRecorder
from tests._helpers import Seq
rec = McapRecorder(sys.argv[1])
i = 0
while True:
    rec.message(Seq(i=i), source="w", worker="w")
    i += 1
    if i % 100 == 0:
        rec.flush()
        sys.stderr.write(f"flushed {i}\\n"); sys.stderr.flush()
"""


def test_a_recording_whose_writer_was_killed_is_read_up_to_the_kill(tmp_path: Path) -> None:
    path = tmp_path / "killed.mcap"
    writer = script(KILLED_WRITER, str(path))
    assert writer.stderr is not None
    try:
        flushed = 0
        while flushed < 500:
            line = writer.stderr.readline()
            assert line, "the writer ended early"
            flushed = int(line.split()[1])
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
        writer.stderr.close()
    done = bussdcc("events", "--file", str(path), "-n", "all", "--json")
    assert done.returncode == 0 and "was not finished" in done.stderr
    got = [json.loads(line)["payload"]["i"] for line in done.stdout.splitlines()]
    assert len(got) >= flushed and got == list(range(len(got)))


def test_rotated_files_are_read_in_the_order_given(tmp_path: Path) -> None:
    first, second = McapRecorder(tmp_path / "run.mcap"), McapRecorder(tmp_path / "run.1.mcap")
    for i in range(3):
        first.message(Seq(i=i), time=_at(i))
        second.message(Seq(i=10 + i), time=_at(10 + i))
    first.close()
    second.close()
    lines = events("--file", str(tmp_path / "run.mcap"), "--file", str(tmp_path / "run.1.mcap"), "-n", "4", "--json")
    assert [json.loads(line)["payload"]["i"] for line in lines] == [2, 10, 11, 12]


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "run.mcap")
    done = bussdcc("events", "--file", str(path), "-f")
    assert (
        done.returncode == 1 and done.stderr == "bussdcc events: -f follows a live runtime; --file reads a recording\n"
    )
    done = bussdcc("events", "--file", str(tmp_path / "nope.mcap"))
    assert (
        done.returncode == 1 and done.stderr.startswith("bussdcc events: cannot read ") and done.stderr.count("\n") == 1
    )
    other = tmp_path / "other.mcap"
    other.write_text("# not a recording\n")
    done = bussdcc("events", "--file", str(other))
    assert done.returncode == 1 and done.stderr == f"bussdcc events: {other} is not an MCAP recording\n"
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")  # the recorder died before writing anything
    done = bussdcc("events", "--file", str(empty))
    assert done.returncode == 0 and done.stdout == "" and "was not finished" in done.stderr


class Emitter(Service):
    name = "emitter"
    interval = 0.01

    def start(self, ctx: Context) -> None:
        self.i = 0

    def tick(self, ctx: Context) -> None:
        if self.i < 20:
            ctx.emit(Seq(i=self.i))
            self.i += 1


def test_the_file_shows_what_the_live_command_showed(tmp_path: Path) -> None:
    path = tmp_path / "live.mcap"
    rt = Runtime(name="events-file-live")
    rec = Recorder()
    rt.register_process(rec)
    rt.register_service(Emitter())
    with recording_of(rt, path):
        rt.boot()
        try:
            rec.wait_for("test.seq", count=20)
            rt.emit(message.SystemSignal(signal=0, action="marker"))
            wait_until(lambda: rec.of("system.signal"), what="the marker")
            assert rt.run_dir is not None
            live = bussdcc("events", "--run-dir", str(rt.run_dir), "-n", "1000", "--json")
        finally:
            rt.shutdown()
    assert live.returncode == 0, live.stderr
    recorded = events("--file", str(path), "-n", "all", "--json")
    live_lines = live.stdout.splitlines()
    assert len(live_lines) > 20
    # The same lines, byte for byte: the file has the live stream's messages, then the shutdown's.
    assert recorded[: len(live_lines)] == live_lines
    assert json.loads(recorded[-1])["name"] == "runtime.shutdown"
    severities = {json.loads(line)["severity"] for line in recorded}
    assert severities <= {s.name for s in Severity}


def test_a_process_error_with_its_event_is_shown_but_events_file_never_rebuilds(tmp_path: Path) -> None:
    # events --file shows what was recorded as recorded: no class needs to be importable.
    path = tmp_path / "foreign.mcap"
    rec = McapRecorder(path)
    rec.raw("elsewhere.thing", b'{"a": [1, 2]}', class_path="nowhere:Thing", severity="WARNING", source="x")
    rec.close()
    (line,) = events("--file", str(path))
    assert line.endswith('WARNING  elsewhere.thing [x] {"a": [1, 2]}')

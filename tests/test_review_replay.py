"""Review: recordings that hold odd data never crash ``bussdcc events --file`` or a replay."""

from __future__ import annotations

from pathlib import Path

from bussdcc import Runtime

from ._cli import bussdcc
from ._helpers import Recorder, Seq
from ._recordings import McapRecorder

#: JSON nested deeper than any decoder recurses: json and msgspec raise RecursionError, not ValueError.
_DEEP = b"[" * 100_000 + b"]" * 100_000


def _deep_recording(path: Path) -> Path:
    rec = McapRecorder(path)
    rec.message(Seq(i=1), source="sensor", worker="sensor")
    rec.message(Seq(i=2), source="sensor", worker="sensor", data=_DEEP)
    rec.message(Seq(i=3), source="sensor", worker="sensor")
    rec.close()
    return path


def test_events_file_shows_a_deeply_nested_payload_without_a_traceback(tmp_path: Path) -> None:
    path = _deep_recording(tmp_path / "deep.mcap")
    done = bussdcc("events", "--file", str(path), "-n", "0", "--json")
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\n") == 3  # every record is shown, the odd one as its raw text


def test_replay_skips_a_deeply_nested_payload_as_unreadable(tmp_path: Path) -> None:
    path = _deep_recording(tmp_path / "deep.mcap")
    rt = Runtime(name="review-deep")
    recorder = Recorder()
    rt.register_process(recorder)
    report = rt.replay(path, speed=None)
    assert [e.payload for e in recorder.events if isinstance(e.payload, Seq)] == [Seq(i=1), Seq(i=3)]
    assert report.unreadable == {"test.seq": 1}


def test_a_deeply_nested_runtime_report_does_not_end_a_replay(tmp_path: Path) -> None:
    # process.started is read for its "process" field before anything is rebuilt.
    path = tmp_path / "deep-report.mcap"
    rec = McapRecorder(path)
    rec.raw("process.started", b'{"process": ' + _DEEP + b"}", class_path="bussdcc.kernel._builtin:ProcessStarted")
    rec.message(Seq(i=1), source="sensor", worker="sensor")
    rec.close()
    rt = Runtime(name="review-deep-report")
    recorder = Recorder()
    rt.register_process(recorder)
    rt.replay(path, speed=None)
    assert [e.payload for e in recorder.events if isinstance(e.payload, Seq)] == [Seq(i=1)]

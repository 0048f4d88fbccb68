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
    done = bussdcc("events", "--file", str(path), "-n", "all", "--json")
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


def _two_seconds_apart(path: Path) -> Path:
    rec = McapRecorder(path)
    rec.message(Seq(i=1), source="sensor", worker="sensor", log_time=1_700_000_000_000_000_000)
    rec.message(Seq(i=2), source="sensor", worker="sensor", log_time=1_700_000_002_000_000_000)
    rec.close()
    return path


def test_replay_speed_inf_is_one_line(tmp_path: Path) -> None:
    path = _two_seconds_apart(tmp_path / "two.mcap")
    target = tmp_path / "empty.toml"
    target.write_text('[runtime]\nname = "review-inf"\n')
    done = bussdcc("replay", str(path), str(target), "--speed", "inf")
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "--speed" in done.stderr


def test_a_replay_slower_than_time_can_count_waits_until_it_is_shut_down(tmp_path: Path) -> None:
    # 1e-300: two recorded seconds are more real seconds than a timeout can hold. The replay waits
    # (it does not crash) until a shutdown ends it.
    import threading

    path = _two_seconds_apart(tmp_path / "two.mcap")
    rt = Runtime(name="review-slow-replay")
    recorder = Recorder()
    rt.register_process(recorder)
    out: list[object] = []

    def run() -> None:
        try:
            out.append(rt.replay(path, speed=1e-300))
        except BaseException as exc:  # what the test is about
            out.append(exc)

    replaying = threading.Thread(target=run, daemon=True)
    replaying.start()
    recorder.wait_for("test.seq", timeout=30)  # the first is fed at once, then the long wait
    rt.shutdown("enough")
    replaying.join(30)
    assert not replaying.is_alive()
    (report,) = out
    assert not isinstance(report, BaseException), repr(report)
    assert report.stopped == "enough"  # type: ignore[attr-defined]
    assert report.fed == 1  # type: ignore[attr-defined]


def test_a_drop_count_out_of_range_does_not_end_a_replay(tmp_path: Path) -> None:
    path = tmp_path / "dropped.mcap"
    rec = McapRecorder(path)
    rec.message(Seq(i=1), source="sensor", worker="sensor")
    rec.raw("recorder.dropped", b'{"count": 1e400}', class_path="bussdcc:Message")  # JSON reads it as inf
    rec.message(Seq(i=2), source="sensor", worker="sensor")
    rec.close()
    rt = Runtime(name="review-dropped")
    recorder = Recorder()
    rt.register_process(recorder)
    report = rt.replay(path, speed=None)
    assert [e.payload for e in recorder.events if isinstance(e.payload, Seq)] == [Seq(i=1), Seq(i=2)]
    assert report.recorder_dropped == 0


def test_events_file_shows_an_output_line_whose_level_is_no_number(tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    rec = McapRecorder(path)
    rec.raw("/bussdcc/log", b'{"level": [2], "name": "w", "message": "hello", "file": "stdout"}', class_path="x:y")
    rec.close()
    done = bussdcc("events", "--file", str(path), "-n", "all")
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0 and "hello" in done.stdout, done.stderr

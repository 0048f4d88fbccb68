"""Replay: a recorded run fed back into the same Processes gives the same output; recorded time; what is skipped."""

from __future__ import annotations

import contextlib
import datetime as _dt
import inspect
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcap.reader import make_reader

from bussdcc import Context, Device, Event, Interface, Message, Process, ReplayReport, Runtime, Service, message
from bussdcc.errors import RecordingError, RuntimeStateError
from bussdcc.kernel._readback import RecordedFile

from ._cli import ROOT, Background, bussdcc
from ._helpers import Recorder, Seq
from ._recordings import McapRecorder, recording_of, write_recording

# ---- a small system: a device that samples, a service that answers, a process and an interface ----


@dataclass(slots=True, frozen=True)
class Reading(Message):
    name = "replay.reading"
    i: int
    value: float


@dataclass(slots=True, frozen=True)
class Average(Message):
    name = "replay.average"
    n: int
    mean: float


@dataclass(slots=True, frozen=True)
class Ask(Message):
    name = "replay.ask"
    n: int


@dataclass(slots=True, frozen=True)
class Answer(Message):
    name = "replay.answer"
    n: int
    pid: int


@dataclass(slots=True, frozen=True)
class Said(Message):
    name = "replay.said"
    who: str
    what: str
    n: int = 0


@dataclass(slots=True, frozen=True)
class Alert(Message):
    name = "replay.alert"
    n: int
    mean: float


READINGS = 30


class Sampler(Device):
    """Samples random values on a thread of its own: a rerun would give other values, a replay the same."""

    kind = "sampler"

    def connect(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        for i in range(READINGS):
            if self._stop.wait(0.005):
                return
            assert self.ctx is not None
            self.ctx.emit(Reading(i=i, value=round(random.uniform(0, 100), 3)))


class Answerer(Service):
    """Answers each Ask from its own process."""

    name = "answerer"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ask):
            ctx.emit(Answer(n=evt.payload.n, pid=os.getpid()))


class Averager(Process):
    """Keeps a running mean, asks the service every fifth reading, acknowledges its answers."""

    name = "averager"

    def __init__(self) -> None:
        self.total = 0.0
        self.n = 0

    def start(self, ctx: Context) -> None:
        ctx.emit(Said(who=self.name, what="hello"))

    def stop(self, ctx: Context) -> None:
        ctx.emit(Said(who=self.name, what="bye", n=self.n))

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        payload = evt.payload
        if isinstance(payload, Reading):
            self.total += payload.value
            self.n += 1
            ctx.emit(Average(n=self.n, mean=round(self.total / self.n, 6)))
            ctx.state.set("averager.n", self.n)
            if self.n % 5 == 0:
                ctx.emit(Ask(n=self.n))
        elif isinstance(payload, Answer):
            # What the answer says about the live worker is in the recording: the same in replay.
            ctx.emit(Said(who=self.name, what=f"answered by {payload.pid}", n=payload.n))
        elif isinstance(payload, message.WorkerStarted):
            ctx.emit(Said(who=self.name, what=f"{payload.worker} up", n=payload.pid))


class Alarm(Interface):
    """Reacts to the averager's output: a chain of outputs, produced again in replay."""

    name = "alarm"

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Average) and evt.payload.mean > 50:
            ctx.emit(Alert(n=evt.payload.n, mean=evt.payload.mean))


OUTPUT_SOURCES = {"averager", "alarm"}


def build(name: str, **options: Any) -> tuple[Runtime, Recorder]:
    """The system, as its application builds it (the same for the live run and the replay)."""
    rt = Runtime(name=name, **options)
    rec = Recorder()
    rt.attach_device(Sampler(id="sampler"))
    rt.register_process(Averager())
    rt.register_process(rec)
    rt.register_interface(Alarm())
    rt.register_service(Answerer())
    return rt, rec


#: Whether the runtime has its own flight recorder (``Runtime(record=...)``): then it records the run.
REAL_RECORDER = "record" in inspect.signature(Runtime.__init__).parameters


def record_run(path: Path) -> list[Event[Message]]:
    """Run the system for real, with its worker processes, recording what it dispatched; what its Recorder saw.

    The runtime's own recorder writes the file when there is one; else an EventBus
    subscriber writes it in the same format (it sees every message in dispatch order, as
    the recorder does).
    """
    if REAL_RECORDER:
        rt, rec = build("replay-live", record=path)
        recording: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    else:
        rt, rec = build("replay-live")
        recording = recording_of(rt, path)
    with recording:
        rt.boot()
        try:
            rec.wait_for("replay.reading", count=READINGS, timeout=30)
            rec.wait_for("replay.said", lambda e: e.payload.to_dict()["n"] == READINGS // 5 * 5, timeout=30)
        finally:
            rt.shutdown()
    return list(rec.events)


def seen(events: list[Event[Message]]) -> list[tuple[str, str, Message]]:
    return [(e.payload.name, e.source, e.payload) for e in events]


def output(events: list[Event[Message]]) -> list[tuple[str, str, Message]]:
    return [s for s in seen(events) if s[1] in OUTPUT_SOURCES]


@pytest.mark.timeout(180)
def test_a_recorded_run_replayed_into_the_same_processes_gives_identical_output(tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    live = record_run(path)
    assert any(e.source == "sampler" for e in live) and any(e.source == "answerer" for e in live)

    # The file is the agreed format, readable by mcap's own reader.
    with path.open("rb") as f:
        topics = {channel.topic for _, channel, _ in make_reader(f).iter_messages()}
    assert {"runtime.booting", "replay.reading", "replay.answer", "replay.average", "runtime.shutdown"} <= topics

    rt, rec = build("replay-again")
    report = rt.replay(path, speed=None)
    assert report.stopped is None and not report.unreadable and not report.truncated
    assert report.receivers == ["averager", "recorder", "alarm"]
    assert report.workers == ["sampler", "answerer"]
    # The Processes saw the same sequence they saw live, message for message.
    assert seen(rec.events) == seen(live)
    assert output(rec.events) == output(live)
    assert len(output(live)) > READINGS
    # What came from the recording carries its recorded time.
    regenerated = {"process.started", "process.stopped", "interface.started", "interface.stopped"}
    fed = [
        (e, f)
        for e, f in zip(rec.events, live, strict=True)
        if f.source not in OUTPUT_SOURCES and f.payload.name not in regenerated
    ]
    assert [e.time for e, _ in fed] == [f.time for _, f in fed]
    assert rt.state.get("averager.n") == READINGS
    # A second replay into fresh instances: the same again, times of the produced messages included.
    rt2, rec2 = build("replay-twice")
    rt2.replay(path, speed=None)
    assert [(e.payload, e.source, e.time) for e in rec2.events] == [(e.payload, e.source, e.time) for e in rec.events]


def cli_target() -> Runtime:
    """The system for ``bussdcc replay FILE tests.test_replay:cli_target``."""
    return build("replay-cli")[0]


@pytest.mark.timeout(180)
def test_the_replay_command_feeds_a_real_recording_in_the_live_order(tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    record_run(path)
    done = bussdcc("replay", str(path), "tests.test_replay:cli_target", "--fast", "-v", timeout=120)
    assert done.returncode == 0, done.stderr
    # -v prints every dispatched message as the EventBus sees it: the same names from the same
    # sources, in the order the recording has them (the live dispatch order); the recorder's own
    # account of what it dropped is reported at the end, not fed.
    printed = [line.split(" ", 1)[1] for line in done.stdout.splitlines()]
    recorded = [r for r in RecordedFile(path) if r.topic != "recorder.dropped"]
    assert printed == [f"{r.topic} [{r.source}]" for r in recorded]
    assert "not started: sampler, answerer" in done.stderr and "0 unreadable" in done.stderr


class ClockWatcher(Process):
    """Notes what its clock says at each message it handles."""

    name = "clock-watcher"

    def __init__(self) -> None:
        self.seen: list[tuple[str, _dt.datetime, float]] = []

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        self.seen.append((evt.payload.name, ctx.clock.now_utc(), ctx.clock.monotonic()))


def _spaced(tmp_path: Path, gap: float) -> tuple[Path, list[int]]:
    base = time.time_ns()
    stamps = [base + round(i * gap * 1e9) for i in range(4)]
    events: list[tuple[Event[Message], int | None, str]] = []
    for i, ns in enumerate(stamps):
        t = _dt.datetime.fromtimestamp(ns / 1e9, _dt.UTC)
        events.append((Event(Seq(i=i), t, "sensor"), ns, "sensor"))
    return write_recording(tmp_path / "spaced.mcap", events), stamps


@pytest.mark.parametrize("speed", [None, 4.0])
def test_the_clock_follows_recorded_time_and_speed_scales_the_gaps(tmp_path: Path, speed: float | None) -> None:
    path, stamps = _spaced(tmp_path, 0.2)
    rt = Runtime(name="replay-clock")
    watcher = ClockWatcher()
    rt.register_process(watcher)
    began = time.monotonic()
    report = rt.replay(path, speed=speed)
    elapsed = time.monotonic() - began
    assert report.fed == 4 and report.span == pytest.approx(0.6)
    assert [name for name, _, _ in watcher.seen] == ["process.started"] + ["test.seq"] * 4 + ["process.stopped"]
    seqs = watcher.seen[1:5]
    assert [t for _, t, _ in seqs] == [
        _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(microseconds=round(ns / 1000)) for ns in stamps
    ]
    assert [m for _, _, m in seqs] == pytest.approx([0.0, 0.2, 0.4, 0.6], abs=1e-6)
    if speed is not None:
        # The gaps were waited, scaled (only a lower bound: a loaded machine may be slower).
        assert elapsed >= 0.6 / speed * 0.95
    # Afterwards the runtime has its own clock back.
    assert abs((rt.clock.now_utc() - _dt.datetime.now(_dt.UTC)).total_seconds()) < 3600


class Stopper(Process):
    """Asks for a shutdown at the third reading, and notes whether the runtime let it boot meanwhile."""

    name = "stopper"

    def __init__(self) -> None:
        self.count = 0
        self.boot_refused: str | None = None
        self.children: list[psutil.Process] = []
        self.workers: list[Any] = []

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            self.count += 1
            self.children = psutil.Process().children(recursive=True)
            rt = ctx.runtime
            assert isinstance(rt, Runtime)
            self.workers = rt.workers()
            if self.count == 3:
                try:
                    rt.boot()
                except RuntimeStateError as exc:
                    self.boot_refused = str(exc)
                rt.shutdown("seen enough")


class Chatty(Service):
    name = "chatty"
    interval = 0.01

    def tick(self, ctx: Context) -> None:
        ctx.emit(Seq(i=-1))


def test_no_worker_runs_during_replay_and_a_shutdown_ends_it(tmp_path: Path, run_base: Path) -> None:
    events: list[tuple[Event[Message], int | None, str]] = [
        (Event(Seq(i=i), _dt.datetime.now(_dt.UTC), "chatty"), None, "chatty") for i in range(10)
    ]
    path = write_recording(tmp_path / "ten.mcap", events)
    rt = Runtime(name="replay-stop")
    stopper = Stopper()
    rt.register_process(stopper)
    rt.register_service(Chatty())
    report = rt.replay(path, speed=None)
    assert report.stopped == "seen enough" and report.fed == 3
    assert stopper.children == [] and stopper.workers == []
    assert stopper.boot_refused == "the runtime is replaying a recording"
    assert not list(run_base.iterdir())  # no run directory, no sockets
    # The runtime is as it was: it can boot (and its service runs) after the replay.
    rec = Recorder()
    rt2 = Runtime(name="replay-after")
    rt2.register_process(rec)
    rt2.register_service(Chatty())
    with rt2:
        rec.wait_for("test.seq")
    with pytest.raises(RuntimeStateError), rt2:
        rt2.replay(path)


@dataclass(slots=True, frozen=True)
class Changed(Message):
    name = "replay.changed"
    now_required: int


def test_messages_that_cannot_be_rebuilt_are_skipped_counted_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "odd.mcap"
    rec = McapRecorder(path)
    rec.message(Seq(i=1), source="sensor", worker="sensor")
    for _ in range(3):  # a class that is gone
        rec.raw("replay.gone", b'{"x": 1}', class_path="tests.nowhere:Gone")
    rec.message(Changed(now_required=1), data=b'{"old_field": 2}')  # a class whose fields changed
    rec.message(Changed(now_required=2), data=b'{"old_field": 3}')
    rec.message(Seq(i=2), data=b"not json")
    rec.message(Seq(i=3), source="sensor", worker="sensor")
    # A nested event is recorded as its text: the message is fed without it.
    failed = message.ServiceError(
        service="sensor", error="ValueError()", evt=Event(Seq(i=2), _dt.datetime.now(_dt.UTC))
    )
    rec.message(failed, source="sensor", worker="sensor")
    rec.close()
    rt = Runtime(name="replay-odd")
    recorder = Recorder()
    rt.register_process(recorder)
    with caplog.at_level(logging.WARNING, logger="bussdcc.replay"):
        report = rt.replay(path, speed=None)
    assert [e.payload for e in recorder.events if isinstance(e.payload, Seq)] == [Seq(i=1), Seq(i=3)]
    assert report.unreadable == {"replay.gone": 3, "replay.changed": 2, "test.seq": 1}
    assert report.without_event == {"service.error": 1}
    (error,) = recorder.of("service.error")
    assert error.payload == message.ServiceError(service="sensor", error="ValueError()", evt=None)
    warned = [r.getMessage() for r in caplog.records if r.name == "bussdcc.replay"]
    assert len(warned) == 3
    assert any("tests.nowhere:Gone" in w for w in warned)


def test_what_replay_does_not_feed_and_a_mid_run_recording(tmp_path: Path) -> None:
    path = tmp_path / "mid.mcap"
    rec = McapRecorder(path)
    rec.message(Seq(i=1), source="sensor", worker="sensor", incarnation=2)
    rec.log_line("sensor", "driver says hi")  # worker output: never dispatched
    rec.message(Said(who="averager", what="from the recording"), source="averager")  # produced again, not fed
    rec.message(Said(who="gone-process", what="kept"), source="gone-process")  # a process the target lacks: fed
    rec.message(message.ProcessError(process="averager", error="x"), source="runtime")
    rec.raw("recorder.dropped", b'{"count": 4, "total": 100}', class_path="bussdcc.kernel._builtin:RecorderDropped")
    rec.message(Seq(i=2), source="sensor", worker="sensor", incarnation=2)
    rec.message(Answer(n=1, pid=1), source="answerer", worker="answerer", incarnation=1)
    rec.abandon()  # cut short: no summary, no footer
    path.write_bytes(path.read_bytes()[:-7])
    rt = Runtime(name="replay-mid")
    recorder = Recorder()
    rt.register_process(Averager())
    rt.register_process(recorder)
    report = rt.replay(path, speed=None, names=["test.*", "replay.said"])
    names = [(e.payload.name, e.source) for e in recorder.events]
    # No runtime.booting recorded: everything started before the first message, stopped at the end.
    assert names == [
        ("replay.said", "averager"),  # the averager's start(), produced live
        ("process.started", "runtime"),
        ("process.started", "runtime"),
        ("test.seq", "sensor"),
        ("replay.said", "gone-process"),
        ("test.seq", "sensor"),
        ("process.stopped", "runtime"),  # in reverse order: the recorder first
        ("replay.said", "averager"),  # the averager's stop()
        ("process.stopped", "runtime"),
    ]
    assert report.recorder_dropped == 4 and report.log_lines == 1
    assert report.reproduced == 2 and report.filtered == 0  # the answer was cut off with the tail
    assert report.truncated == [str(path)]


def test_the_replay_command_runs_a_system_file_processes_only(tmp_path: Path) -> None:
    path = tmp_path / "plant.mcap"
    rec = McapRecorder(path)
    rec.message(message.RuntimeBooting(version="0"))
    rec.message(message.WorkerStarted(worker="sensor-1", role="device", pid=4242, incarnation=1))
    rec.message(message.ProcessStarted(process="logger"))
    rec.message(message.RuntimeBooted(version="0"))
    # The plant's own messages, by name and class (this test process does not import them).
    rec.raw(
        "plant.reading",
        b'{"sensor": "sensor-1", "value": 31.5}',
        class_path="plant:Reading",
        worker="sensor-1",
        source="sensor-1",
    )
    rec.raw(
        "plant.too_hot",
        b'{"value": 31.5}',
        class_path="plant:TooHot",
        severity="WARNING",
        worker="controller",
        source="controller",
    )
    rec.close()
    done = bussdcc("replay", str(path), str(ROOT / "examples" / "plant.toml"), "--fast", "-v")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "[logger] worker.started {'worker': 'sensor-1', 'role': 'device', 'pid': 4242, 'incarnation': 1}" in out
    assert "[logger] plant.too_hot {'value': 31.5}" in out
    assert any(line.endswith("plant.reading [sensor-1]") for line in out)
    assert not any(line.startswith("[sensor-1 ") for line in out)  # the device never ran
    assert "replayed 5 messages (1 produced again" in done.stderr
    assert "not started: sensor-1, controller" in done.stderr

    slow = bussdcc("replay", str(path), "examples/plant.toml", "--speed", "0")
    assert slow.returncode == 1 and slow.stderr.strip() == "bussdcc replay: --speed must be a positive number, not 0"
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"not a recording at all")
    refused = bussdcc("replay", str(bad), "examples/plant.toml")
    assert refused.returncode == 1 and refused.stderr.strip() == f"bussdcc replay: {bad} is not an MCAP recording"


def test_replay_refuses_bad_arguments(tmp_path: Path) -> None:
    rt = Runtime(name="replay-args")
    with pytest.raises(ValueError, match="positive"):
        rt.replay(tmp_path / "x.mcap", speed=0)
    with pytest.raises(RecordingError, match="cannot read"):
        rt.replay(tmp_path / "missing.mcap")
    assert isinstance(ReplayReport(), ReplayReport)


@pytest.mark.timeout(240)
def test_sigint_ends_a_replay_command_that_waits_for_recorded_time(tmp_path: Path) -> None:
    path = tmp_path / "slow.mcap"
    rec = McapRecorder(path)
    now = time.time_ns()
    rec.message(message.RuntimeBooting(version="0"), log_time=now)
    rec.message(message.RuntimeBooted(version="0"), log_time=now + 3600 * 10**9)  # an hour later
    rec.close()
    cmd = Background(["replay", str(path), "examples/plant.toml", "-v"])
    try:
        cmd.wait_line("runtime.booting [runtime]", timeout=90)
        cmd.proc.send_signal(signal.SIGINT)
        assert cmd.wait(90) == 0
    finally:
        cmd.stop()
    said = cmd.wait_line("bussdcc: replayed", err=True)
    assert "replayed 1 messages" in said and "stopped early: Interrupt" in said
    assert not any("runtime.booted" in line for line in cmd.out)

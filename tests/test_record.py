"""Recording: real runs read back with the ``mcap`` package's own readers, every message checked against its schema."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcap.reader import make_reader
from mcap.records import Channel, Schema
from mcap.records import Message as McapMessage
from mcap.stream_reader import StreamReader

from bussdcc import Context, Event, Message, Recording, Runtime, Service, message
from bussdcc.errors import BootError, ConfigError
from bussdcc.kernel._recording import LOG_TOPIC, Recorder, message_schema

from ._cli import Background, bussdcc
from ._helpers import wait_until

N = 2000

Record = tuple[Schema | None, Channel, McapMessage]


@dataclass(slots=True, frozen=True)
class Reading(Message):
    """A reading with nested and optional fields, so that schemas have something to say."""

    name = "test.record.reading"
    i: int
    value: float
    unit: str
    tags: list[str] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)
    note: str | None = None
    at: dt.datetime | None = None


class Flood(Service):
    """Emits N readings at once, and says so on its stdout."""

    name = "flood"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        for i in range(N):
            ctx.emit(Reading(i=i, value=i / 4, unit="C", tags=["a", str(i)], extra={"k": i}, note=None, at=at))
        print("flood says hi", flush=True)


class Crasher(Service):
    """Emits a few readings, prints, then dies without a word."""

    name = "crasher"
    interval = 3600
    restart = False

    def tick(self, ctx: Context) -> None:
        for i in range(5):
            ctx.emit(Reading(i=i, value=1.0, unit="V"))
        print("about to crash", flush=True)
        time.sleep(0.3)  # the line and the readings reach the parent first
        os._exit(3)


def read_all(path: Path) -> list[Record]:
    """Every message of a finished file, through the indexed reader."""
    with path.open("rb") as f:
        return list(make_reader(f).iter_messages())


def stream_all(path: Path) -> tuple[dict[int, Schema], dict[int, Channel], list[McapMessage]]:
    """Everything a stream reader finds in ``path``, stopping quietly at a truncated tail."""
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    messages: list[McapMessage] = []
    with path.open("rb") as f:
        try:
            for rec in StreamReader(f, skip_magic=False).records:
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                elif isinstance(rec, Channel):
                    channels[rec.id] = rec
                elif isinstance(rec, McapMessage):
                    messages.append(rec)
        except Exception:
            pass  # the tail a killed writer left
    return schemas, channels, messages


def validate(schema: Schema | None, data: bytes) -> Any:
    """The JSON of ``data``, validated against the channel's JSON Schema."""
    assert schema is not None and schema.encoding == "jsonschema"
    spec = json.loads(schema.data)
    assert "$ref" not in spec, "the class's definition is inlined at the top"
    value = json.loads(data)
    jsonschema.validate(value, spec)
    return value


def test_every_dispatched_message_is_recorded_once_in_order_with_its_fields(make_runtime: Any, tmp_path: Path) -> None:
    path = tmp_path / "run.mcap"
    rt, seen = make_runtime("rec-all", Flood(), record=str(path))
    seen.wait_for(Reading.name, count=N, timeout=60)
    seen.wait_for("worker.started")
    rt.shutdown()
    dispatched = list(seen.events)

    records = read_all(path)
    messages = [r for r in records if r[1].topic not in (LOG_TOPIC, "recorder.dropped")]
    assert [(r[1].topic, json.loads(r[2].data)) for r in messages] == [
        (e.payload.name, _json(e.payload)) for e in dispatched
    ]
    for (schema, channel, msg), evt in zip(messages, dispatched, strict=True):
        validate(schema, msg.data)
        assert schema is not None and schema.name == evt.payload.name
        assert channel.message_encoding == "json"
        cls = type(evt.payload)
        assert channel.metadata["class"] == f"{cls.__module__}:{cls.__qualname__}"
        assert channel.metadata["severity"] == cls.severity.name
        assert channel.metadata["source"] == evt.source
        assert msg.publish_time == pytest.approx(evt.time.timestamp() * 1e9, abs=2000)
    log_times = [r[2].log_time for r in messages]
    assert log_times == sorted(log_times)

    # From the worker: its name, incarnation and its own sequence numbers, one after another.
    readings = [r for r in messages if r[1].topic == Reading.name]
    assert {(r[1].metadata["worker"], r[1].metadata["incarnation"]) for r in readings} == {("flood", "1")}
    seqs = [r[2].sequence for r in readings]
    assert seqs == list(range(seqs[0], seqs[0] + N))
    # The runtime's own messages carry no worker.
    started = next(r for r in messages if r[1].topic == "worker.started")
    assert started[1].metadata["worker"] == "" and started[1].metadata["incarnation"] == ""

    # Worker output, on the log channel, as foxglove.Log.
    logs = [r for r in records if r[1].topic == LOG_TOPIC]
    said = [validate(r[0], r[2].data) for r in logs]
    assert {"name": "flood", "file": "stdout", "level": 2, "message": "flood says hi", "line": 0}.items() <= said[
        0
    ].items()
    assert logs[0][0] is not None and logs[0][0].name == "foxglove.Log"
    assert logs[0][1].metadata == {"worker": "flood"}

    # A finished file has a summary that counts it all; a stream reader reads the same.
    with path.open("rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and summary.statistics is not None
    assert summary.statistics.message_count == len(records)
    _, _, streamed = stream_all(path)
    assert [m.data for m in streamed] == [r[2].data for r in records]


def _json(msg: Message) -> Any:
    """What ``to_dict()`` looks like as JSON (datetimes as ISO 8601, tuples as arrays)."""
    out = {}
    for key, value in msg.to_dict().items():
        out[key] = value.isoformat().replace("+00:00", "Z") if isinstance(value, dt.datetime) else value
        if isinstance(value, tuple):
            out[key] = list(value)
    return out


def test_schemas_are_the_class_definitions_inlined() -> None:
    schema = message_schema(Reading)
    assert "$ref" not in schema and schema["type"] == "object"
    assert set(schema["properties"]) == {"i", "value", "unit", "tags", "extra", "note", "at"}
    assert schema["required"] == ["i", "value", "unit"]
    jsonschema.Draft202012Validator.check_schema(schema)
    # A nested Event (in error reports) is recorded as its text.
    nested = message_schema(message.ProcessError)
    assert "$ref" not in nested and nested["properties"]["evt"]["anyOf"][0] == {"type": "string"}


def test_a_crash_writes_one_incident_file_holding_the_seconds_before_it(make_runtime: Any, tmp_path: Path) -> None:
    rt, seen = make_runtime(
        "rec-snap", Crasher(), record=Recording(snapshot=30.0, snapshot_dir=str(tmp_path / "incidents"))
    )
    seen.wait_for("worker.exited")
    files = wait_until(lambda: list((tmp_path / "incidents").glob("crasher-*.mcap")), timeout=30, what="an incident")
    rt.shutdown()
    assert len(list((tmp_path / "incidents").iterdir())) == 1
    (path,) = files
    records = read_all(path)
    topics = [r[1].topic for r in records]
    assert topics.count(Reading.name) == 5
    assert "runtime.booted" in topics and "worker.started" in topics
    exited = [json.loads(r[2].data) for r in records if r[1].topic == "worker.exited"]
    assert exited and exited[-1]["worker"] == "crasher" and exited[-1]["abnormal"] is True
    said = [json.loads(r[2].data)["message"] for r in records if r[1].topic == LOG_TOPIC]
    assert "about to crash" in said
    for schema, _, msg in records:
        validate(schema, msg.data)


def test_a_slow_disk_drops_and_counts_and_the_count_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "drops.mcap"
    recorder = Recorder(Recording(path=str(path), buffer=65536), library="test")
    big = Reading(i=0, value=0.0, unit="x" * 2000)
    now = dt.datetime.now(dt.UTC)
    try:
        for _ in range(20_000):  # far faster than one writer pass per FLUSH_PERIOD can take
            recorder.message(Event(big, now, "runtime"))
    finally:
        recorder.close()
    assert recorder.dropped > 0
    records = read_all(path)
    kept = [r for r in records if r[1].topic == Reading.name]
    reports = [json.loads(r[2].data) for r in records if r[1].topic == "recorder.dropped"]
    assert len(kept) + recorder.dropped == recorder.total == 20_000
    assert reports[-1] == {"count": recorder.dropped, "total": 20_000}
    for r in records:
        validate(r[0], r[2].data)


def test_rotation_makes_complete_files_and_the_cap_deletes_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "rot.mcap"
    options = Recording(path=str(path), max_bytes=20_000, max_total=70_000)
    recorder = Recorder(options, library="test")
    now = dt.datetime.now(dt.UTC)
    try:
        for i in range(60):
            for j in range(20):
                recorder.message(Event(Reading(i=i * 20 + j, value=0.0, unit="u" * 40), now, "runtime"))
            wait_until(lambda: not recorder._queue, what="the writer to take what is queued")
    finally:
        recorder.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "rot.mcap" not in names, "the oldest file went first"
    assert len(names) >= 3 and all(n.startswith("rot.") and n.endswith(".mcap") for n in names)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 70_000 + 25_000
    got: list[int] = []
    for name in sorted(names, key=lambda n: int(n.split(".")[1])):
        records = read_all(tmp_path / name)  # each is a complete file, with its own schemas and channels
        got += [json.loads(r[2].data)["i"] for r in records if r[1].topic == Reading.name]
    assert got == list(range(got[0], 1200))


def test_recording_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="snapshot must be a number"):
        Recording(snapshot=-1)
    with pytest.raises(ConfigError, match="buffer must be at least"):
        Recording(path="x.mcap", buffer=10)
    rt = Runtime(name="rec-bad", record=str(tmp_path / "no" / "such" / "dir" / "x.mcap"))
    with pytest.raises(BootError, match="cannot write"):
        rt.boot()
    assert not rt.booted


def test_bussdcc_record_attaches_to_a_live_runtime(make_runtime: Any, tmp_path: Path) -> None:
    path = tmp_path / "live.mcap"
    rt, seen = make_runtime("rec-live", Flood())
    seen.wait_for(Reading.name, count=N, timeout=60)
    cmd = Background(["record", "rec-live", "-o", str(path), "--import", "tests.test_record"])
    try:
        cmd.wait_line("recording rec-live", err=True, timeout=30)
        rt.restart_worker("flood")  # its second incarnation floods again, while recorded
        seen.wait_for(Reading.name, count=2 * N, timeout=60)
        # The file is readable while it is written; the worker's line comes on a path of its own.
        wait_until(lambda: _count(path, LOG_TOPIC) >= 1, timeout=30, what="the worker's line on disk")
        rt.shutdown()
        assert cmd.wait(timeout=30) == 0
    finally:
        cmd.stop()
    records = read_all(path)
    readings = [r for r in records if r[1].topic == Reading.name]
    assert {(r[1].metadata["worker"], r[1].metadata["incarnation"]) for r in readings} == {("flood", "2")}
    seqs = [r[2].sequence for r in readings]
    # A subscriber too slow for the stream misses messages (the control plane never waits for one):
    # then the file says how many.
    dropped = [json.loads(r[2].data)["count"] for r in records if r[1].topic == "recorder.dropped"][-1]
    assert len(readings) + dropped >= N
    assert seqs == sorted(set(seqs))
    if not dropped:
        assert seqs == list(range(seqs[0], seqs[0] + N))
    for r in records:
        validate(r[0], r[2].data)
    assert any(r[1].topic == LOG_TOPIC and b"flood says hi" in r[2].data for r in records)


@pytest.mark.parametrize("where", ["option", "file"])
def test_bussdcc_run_records(tmp_path: Path, where: str) -> None:
    path = tmp_path / "cli.mcap"
    system = tmp_path / "rec.toml"
    record = f"record = {json.dumps(str(path))}\n" if where == "file" else ""
    system.write_text(
        f'[runtime]\nname = "rec-cli"\n{record}\n[[services]]\nclass = "tests.test_record:Flood"\nname = "f"\n'
    )
    cmd = Background(["run", str(system), *(["--record", str(path)] if where == "option" else [])])
    try:
        cmd.wait_line("running", err=True, timeout=30)
        wait_until(lambda: _count(path, Reading.name) == N, timeout=60, what="the readings on disk")
        assert bussdcc("shutdown", "rec-cli").returncode == 0
        assert cmd.wait(timeout=30) == 0
    finally:
        cmd.stop()
    records = read_all(path)
    assert [r[1].topic for r in records].count(Reading.name) == N
    reports = [json.loads(r[2].data) for r in records if r[1].topic == "recorder.dropped"]
    assert reports == [{"count": 0, "total": len(records) - 1}]


def _count(path: Path, topic: str) -> int:
    if not path.exists():
        return 0
    _, channels, messages = stream_all(path)
    return sum(1 for m in messages if m.channel_id in channels and channels[m.channel_id].topic == topic)

"""The flight recorder: every dispatched message and worker output line, written to MCAP files.

Two halves. The tap (:meth:`Recorder.message`, :meth:`Recorder.output`) runs on the thread
that dispatches, under the runtime's dispatch lock: it encodes the message as JSON
(``msgspec``, one C call), frames it as an MCAP Message record and appends the bytes to a
buffer bounded in bytes. When the buffer is full the message is dropped and counted: the
tap never waits for the disk. The writer thread takes the whole buffer every
:data:`FLUSH_PERIOD` seconds, writes it with one ``write`` (so a SIGKILL loses at most
that much), rotates files, enforces the disk cap, keeps the last seconds in memory
for snapshots and writes incident files.

The file layout (header, schemas, channels, summary, footer) is made of the ``mcap``
package's own records (``mcap.records``), imported lazily; the Message records of the data
section are framed here in bulk, with the layout ``mcap.records.Message`` writes, because
one ``mcap`` call per message costs more than a whole dispatch. The format is described
in the README ("Recording") for readers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.util
import json
import math
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from ..errors import ConfigError
from . import _builtin as m
from ._event import Event
from ._message import Message, Severity
from ._readback import LOG_TOPIC

__all__ = ["FLUSH_PERIOD", "LOG_TOPIC", "Recorder", "Recording", "check_available", "message_schema"]

#: The writer thread writes what the tap buffered at least this often (seconds).
FLUSH_PERIOD: Final = 0.02
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MICROSECOND: Final = _dt.timedelta(microseconds=1)
_MIB = 1024 * 1024
#: A buffer this full wakes the writer before its period is up.
_WAKE_BYTES = 1 * _MIB
_OP_MESSAGE = 0x05
_MSG_HEAD = struct.Struct("<BQHIQQ")  # opcode, record length, channel, sequence, log time, publish time
_MSG_FIXED = 2 + 4 + 8 + 8  # a Message record's fields before its data
_MSG_SIZE = 9 + _MSG_FIXED  # with the opcode and the length: 31 bytes and the data
_FIRST_TIME = struct.Struct("<Q")  # a record's log time, 15 bytes into it
_FAST_STAMP: Final = 2.0**51  # µs: below it a float product is exact to 1/8 (see Recorder.message)
_MAX_CHANNELS = 0xFFFF
#: Write failures are reported at most once per this many seconds.
_REPORT_PERIOD = 10.0
#: How long closing waits for the writer thread (a disk that hangs) before it gives up.
_CLOSE_WAIT = 30.0
#: Incident files are written at most once per worker per this many seconds (or the window, if longer).
_INCIDENT_GAP = 1.0

_LOG_SCHEMA: Final = {
    "title": "foxglove.Log",
    "description": "A log message",
    "type": "object",
    "properties": {
        "timestamp": {
            "type": "object",
            "properties": {"sec": {"type": "integer", "minimum": 0}, "nsec": {"type": "integer", "minimum": 0}},
            "required": ["sec", "nsec"],
        },
        "level": {"type": "integer", "enum": [0, 1, 2, 3, 4, 5]},
        "message": {"type": "string"},
        "name": {"type": "string"},
        "file": {"type": "string"},
        "line": {"type": "integer", "minimum": 0},
    },
    "required": ["timestamp", "level", "message", "name", "file", "line"],
}


@dataclasses.dataclass(frozen=True, slots=True)
class Recording:
    """What a runtime records: the file, rotation, the disk cap, the drop buffer, and snapshots."""

    #: The MCAP file to record to (``None``: no continuous recording, snapshots only).
    path: str | None = None
    #: Seconds of the recent past kept in memory for incident snapshots (0: none).
    snapshot: float = 0.0
    #: Where incident snapshots are written.
    snapshot_dir: str = "."
    #: Start a new file once the current one holds this many bytes (None: never).
    max_bytes: int | None = None
    #: Start a new file once the current one is this many seconds old (None: never).
    max_seconds: float | None = None
    #: Delete the oldest files of this recording once all of them together hold more bytes than this.
    max_total: int | None = None
    #: Bytes waiting for the disk before new messages are dropped (and counted).
    buffer: int = 64 * _MIB
    #: Bytes of the recent past kept for snapshots, at most.
    snapshot_bytes: int = 64 * _MIB

    def __post_init__(self) -> None:
        if self.path is not None and (not isinstance(self.path, str) or not self.path):
            raise ConfigError("record: the path must be a non-empty string")
        checks: tuple[tuple[str, float | None], ...] = (
            ("snapshot", self.snapshot),
            ("max_bytes", self.max_bytes),
            ("max_seconds", self.max_seconds),
            ("max_total", self.max_total),
            ("buffer", self.buffer),
            ("snapshot_bytes", self.snapshot_bytes),
        )
        for key, value in checks:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"record: {key} must be a number >= 0, not {value!r}")
        if self.buffer < 64 * 1024:
            raise ConfigError(f"record: buffer must be at least 65536 bytes, not {self.buffer!r}")

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded at all."""
        return self.path is not None or self.snapshot > 0


def check_available() -> None:
    """Raise :class:`ConfigError` unless the ``mcap`` package can be imported."""
    if importlib.util.find_spec("mcap") is None:
        raise ConfigError("recording needs the mcap package: pip install 'bussdcc[record]'")


# ---- JSON and schemas ------------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    # What JSON cannot hold is written as text: a nested Event as its repr, anything else as str.
    if isinstance(obj, Event):
        return repr(obj)
    return str(obj)


def _schema_hook(kind: type) -> dict[str, Any]:
    return {"type": "string"}


_encoder: Final = msgspec.json.Encoder(enc_hook=_enc_hook)
_schemas: dict[type, bytes] = {}


def message_schema(cls: type[Message]) -> dict[str, Any]:
    """The JSON Schema of ``cls``'s ``to_dict()`` as recorded: the class's definition at the top, no ``$ref``."""
    try:
        raw = msgspec.json.schema(cls, schema_hook=_schema_hook)
    except (TypeError, ValueError):
        return {"title": cls.__name__, "type": "object"}
    ref = raw.get("$ref", "")
    defs: dict[str, Any] = raw.get("$defs", {})
    top = defs.get(ref.rsplit("/", 1)[-1]) if ref else None
    if top is None:
        return raw
    schema = dict(top)
    if len(defs) > 1 or _mentions_ref(top):
        schema["$defs"] = defs  # nested types (and the class itself, if it nests) stay resolvable
    return schema


def _mentions_ref(value: Any) -> bool:
    if isinstance(value, dict):
        return "$ref" in value or any(_mentions_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(_mentions_ref(v) for v in value)
    return False


def _schema_bytes(cls: type[Message]) -> bytes:
    data = _schemas.get(cls)
    if data is None:
        data = _schemas[cls] = json.dumps(message_schema(cls), separators=(",", ":")).encode()
    return data


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100] or "worker"


# ---- what the tap hands the writer ---------------------------------------------------------


class _Batch:
    """Framed message records taken together by the writer, and what the summary needs to know of them."""

    __slots__ = ("data", "first", "last", "messages", "taken")

    def __init__(self, data: bytes, messages: int) -> None:
        self.data = data
        self.messages = messages
        self.first = 0
        self.last = 0
        self.taken = 0.0  # monotonic time the writer took it


class _Def:
    """A schema or channel the file needs before messages that use it."""

    __slots__ = ("fields", "kind")

    def __init__(self, kind: str, fields: dict[str, Any]) -> None:
        self.kind = kind
        self.fields = fields


class _File:
    """One MCAP file being written: its fd, and what its summary will say."""

    def __init__(self, path: Path, defs: list[_Def], library: str) -> None:
        from mcap.data_stream import RecordBuilder
        from mcap.records import Header
        from mcap.writer import MCAP0_MAGIC

        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.size = 0
        self.opened = time.monotonic()
        self.schemas: list[Any] = []
        self.channels: list[Any] = []
        self.written_defs = 0
        self.messages = 0
        self.first = 0
        self.last = 0
        builder: Any = RecordBuilder()
        builder.write(MCAP0_MAGIC)
        Header(profile="", library=library).write(builder)
        self.write(builder.end())
        self.add_defs(defs)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.size += n

    def add_defs(self, defs: list[_Def]) -> None:
        """Write the schemas and channels not yet in this file."""
        if self.written_defs >= len(defs):
            return
        from mcap.data_stream import RecordBuilder
        from mcap.records import Channel, Schema

        builder: Any = RecordBuilder()
        for d in defs[self.written_defs :]:
            if d.kind == "schema":
                rec: Any = Schema(**d.fields)
                self.schemas.append(rec)
            else:
                rec = Channel(**d.fields)
                self.channels.append(rec)
            rec.write(builder)
        self.written_defs = len(defs)
        self.write(builder.end())

    def add(self, batch: _Batch) -> None:
        """Write ``batch`` (its defs are written already) and count it."""
        if not batch.messages:
            return
        self.write(batch.data)
        if not self.messages or batch.first < self.first:
            self.first = batch.first
        self.last = max(self.last, batch.last)
        self.messages += batch.messages

    def finish(self) -> None:
        """Write the summary and the footer, and close: a complete MCAP file (never raises)."""
        try:
            self.write(_summary(self))
        except OSError:
            pass  # the disk is full or gone: what is written stays readable by a stream reader
        finally:
            os.close(self.fd)


def _summary(file: _File) -> bytes:
    """DataEnd, the summary section (schemas, channels, statistics, offsets), the footer and the magic."""
    import zlib

    from mcap.data_stream import RecordBuilder
    from mcap.opcode import Opcode
    from mcap.records import DataEnd, Footer, Statistics, SummaryOffset
    from mcap.writer import MCAP0_MAGIC

    start, schemas, channels = file.size, file.schemas, file.channels
    head: Any = RecordBuilder()
    DataEnd(data_section_crc=0).write(head)
    head_bytes = head.end()
    summary_start = start + len(head_bytes)
    builder: Any = RecordBuilder()
    offsets: list[Any] = []
    groups: tuple[tuple[int, list[Any]], ...] = ((Opcode.SCHEMA, schemas), (Opcode.CHANNEL, channels))
    for opcode, records in groups:
        if not records:
            continue
        begin = builder.count
        for rec in records:
            rec.write(builder)
        length = builder.count - begin
        offsets.append(SummaryOffset(group_opcode=opcode, group_start=summary_start + begin, group_length=length))
    begin = builder.count
    Statistics(
        attachment_count=0,
        channel_count=len(channels),
        channel_message_counts={},  # not counted: the tap's every instruction counts (empty: "not available")
        chunk_count=0,
        message_count=file.messages,
        message_end_time=file.last,
        message_start_time=file.first,
        metadata_count=0,
        schema_count=len(schemas),
    ).write(builder)
    length = builder.count - begin
    stats = SummaryOffset(group_opcode=Opcode.STATISTICS, group_start=summary_start + begin, group_length=length)
    offsets.append(stats)
    offset_start = summary_start + builder.count
    for offset in offsets:
        offset.write(builder)
    summary = builder.end()
    crc = zlib.crc32(summary)
    crc = zlib.crc32(struct.pack("<BQQQ", Opcode.FOOTER, 8 + 8 + 4, summary_start, offset_start), crc)
    tail: Any = RecordBuilder()
    Footer(summary_start=summary_start, summary_offset_start=offset_start, summary_crc=crc).write(tail)
    return bytes(head_bytes + summary + tail.end() + MCAP0_MAGIC)


# ---- the recorder ---------------------------------------------------------------------------


class Recorder:
    """Records what a runtime dispatches (the tap) through a writer thread of its own.

    The tap's methods are called by one thread at a time (the runtime calls them under its
    dispatch lock): they share nothing with the writer thread but a deque (thread-safe appends
    and pops) and counters each side writes alone, so the hot path takes no lock.

    ``index`` numbers the first file (0: ``run.mcap``, n: ``run.n.mcap``); after :meth:`close`,
    :attr:`index` is the number the next recorder of the same path should start from.
    """

    def __init__(
        self,
        options: Recording,
        *,
        library: str,
        index: int = 0,
        report: Callable[[str], None] | None = None,
    ) -> None:
        check_available()
        import mcap.records  # noqa: F401  (the import costs ~90 ms: paid here, at boot, not per message)

        self.options = options
        self._limit = options.buffer
        self.library = library
        self.index = index
        #: Told (from the writer thread) about a failure to write: the recording goes on if it can.
        self._report = report
        # Written by the tap alone: ----------------------------------------------------------
        self._queue: deque[bytes] = deque()  # framed Message records, for the writer
        self._queued_bytes = 0
        self._wake_at = _WAKE_BYTES  # queued bytes at which the tap wakes the writer early
        self._defs: list[_Def] = []
        self._channels: dict[tuple[type | str, str, int], int] = {}
        self._schema_ids: dict[type | str, int] = {}
        self._log_channels: dict[str, int] = {}
        self._log_schema = 0
        self._own_seq = 0
        #: Messages dropped because the disk could not keep up (or the channel table was full),
        #: and messages the tap was given in all.
        self.dropped = 0
        #: Messages the source of the stream dropped before they reached us (``bussdcc record``).
        self.dropped_upstream = 0
        self._incidents: deque[tuple[str, _dt.datetime]] = deque()
        self._last_incident: dict[str, float] = {}
        # Written by the writer alone: ---------------------------------------------------------
        self._written_bytes = 0
        self._taken = 0  # messages taken from the queue
        #: Messages taken from the queue that could not be written (a full disk).
        self.lost = 0
        self._file: _File | None = None
        #: Files written by this recorder, oldest first (rotation and the disk cap).
        self.files: list[Path] = []
        #: Incident snapshots written.
        self.incidents: list[Path] = []
        self._ring: deque[_Batch] = deque()
        self._ring_bytes = 0
        self._recorded_drops = 0
        self._reported = -_REPORT_PERIOD
        self._drop_seq = 0
        # ---------------------------------------------------------------------------------------
        self._snapshot = options.snapshot > 0
        self._triggers: tuple[type, ...] = (m.WorkerExited, m.WorkerHung, m.WorkerGaveUp)
        self._wakeup = threading.Event()
        self._closing = False
        # The writer's own channel, made before the writer runs: only the tap makes channels.
        self._drop_channel = self._channel((m.RecorderDropped, "recorder", 0))
        if options.path is not None:
            self._open()  # a path that cannot be written is a boot error, not a silent gap
        self._thread = threading.Thread(target=self._run, name="bussdcc-recorder", daemon=True)
        self._thread.start()

    # ---- the tap (one thread at a time: the runtime's dispatch lock) ---------------------------

    def message(
        self,
        evt: Event[Message],
        incarnation: int = 0,
        seq: int = 0,
        dispatched: int = 0,
        _encode: Callable[[Any], bytes] = _encoder.encode,
        _pack: Callable[..., bytes] = _MSG_HEAD.pack,
        _round: Callable[[float], int] = round,
        _now: Callable[[], int] = time.time_ns,
    ) -> None:
        """Record ``evt``, dispatched at ``dispatched`` (ns); from a worker (its source): its incarnation and sequence.

        The hot path of recording, kept to one function: it runs once per dispatched message.
        """
        try:
            payload = evt.payload
            data = _encode(payload)
            key = (type(payload), evt.source, incarnation)
            chan = self._channels.get(key)
            if chan is None:
                chan = self._channel(key)
                if not chan:
                    self.dropped += 1
                    return
            if not incarnation:
                self._own_seq += 1
                seq = self._own_seq
            # publish_time is the Event's own time, exact to the microsecond as datetime rounds
            # it (a replay must see the very time the live run saw). Below 2**51 µs (until 2041)
            # ``ts * 1e6`` is off by at most 1/8 µs, so where it lies 0.37 or less from a whole
            # number that number is datetime's; nearer a half, or later, the exact rounding decides.
            stamp = evt._ts
            if stamp is None:
                publish = (evt._time - _EPOCH) // _MICROSECOND * 1000  # type: ignore[operator]
            else:
                micro = stamp * 1e6
                whole = _round(micro)
                if -0.37 < micro - whole < 0.37 and -_FAST_STAMP < micro < _FAST_STAMP:
                    publish = whole * 1000
                else:
                    publish = _exact_ns(stamp)
            size = _MSG_SIZE + len(data)
            queued = self._queued_bytes + size
            if queued - self._written_bytes > self._limit:
                self.dropped += 1
                return
            self._queue.append(
                _pack(
                    _OP_MESSAGE, size - 9, chan, seq & 0xFFFFFFFF, dispatched or _now(), publish if publish > 0 else 0
                )
                + data
            )
            self._queued_bytes = queued
            if queued > self._wake_at:
                self._wake_writer(queued)
            if self._snapshot and isinstance(payload, self._triggers):
                self._trigger(payload)
        except Exception:  # the tap never fails a dispatch: what it cannot record, it counts
            self.dropped += 1

    def _wake_writer(self, queued: int) -> None:
        # Checked against one precomputed mark per message; the writer moves the mark on.
        self._wake_at = queued + _WAKE_BYTES
        self._wakeup.set()

    def foreign(  # noqa: PLR0917  (the fields of one streamed message)
        self,
        name: str,
        severity: int,
        fields: Any,
        ts: float,
        source: str,
        worker: str,
        incarnation: int,
        seq: int,
        dispatched: int,
    ) -> None:
        """Record a message whose class this process does not know, from its name and decoded fields."""
        try:
            data = _encoder.encode(fields)
            chan = self._channels.get((name, source, incarnation))
            if chan is None:
                chan = self._foreign_channel(name, severity, source, worker, incarnation)
                if not chan:
                    self.dropped += 1
                    return
            if not incarnation:
                self._own_seq += 1
                seq = self._own_seq
            self._append(chan, seq, dispatched or time.time_ns(), max(0, int(ts * 1e9)), data)
        except Exception:
            self.dropped += 1

    def output(self, worker: str, stream: str, line: str, when: float | None = None) -> None:
        """Record a line ``worker`` wrote to ``stream`` (``"stdout"`` or ``"stderr"``)."""
        try:
            now = time.time_ns()
            stamp = now if when is None else max(0, int(when * 1e9))
            sec, nsec = divmod(stamp, 1_000_000_000)
            record = {
                "timestamp": {"sec": sec, "nsec": nsec},
                "level": 2 if stream == "stdout" else 3,
                "message": line,
                "name": worker,
                "file": stream,
                "line": 0,
            }
            chan = self._log_channels.get(worker)
            if chan is None:
                chan = self._log_channel(worker)
                if not chan:
                    self.dropped += 1
                    return
            self._own_seq += 1
            self._append(chan, self._own_seq, now, stamp, _encoder.encode(record))
        except Exception:
            self.dropped += 1

    def lost_upstream(self, count: int) -> None:
        """``count`` messages never reached the recorder (a slow subscriber of the event stream)."""
        self.dropped_upstream += count

    @property
    def total(self) -> int:
        """Messages given to the recorder (recorded, queued or dropped), and those lost upstream."""
        return self._taken + len(self._queue) + self.dropped + self.dropped_upstream

    def _append(self, chan: int, seq: int, now: int, publish: int, data: bytes) -> None:
        size = _MSG_SIZE + len(data)
        queued = self._queued_bytes + size
        if queued - self._written_bytes > self._limit:
            self.dropped += 1
            return
        self._queue.append(_MSG_HEAD.pack(_OP_MESSAGE, size - 9, chan, seq & 0xFFFFFFFF, now, publish) + data)
        self._queued_bytes = queued
        if queued > self._wake_at:
            self._wake_writer(queued)

    def _schema(self, cls: type[Message]) -> int:
        sid = self._schema_ids.get(cls)
        if sid is None:
            sid = self._schema_ids[cls] = len(self._schema_ids) + 2  # 1 is foxglove.Log's
            fields = {"id": sid, "name": cls.name, "encoding": "jsonschema", "data": _schema_bytes(cls)}
            self._defs.append(_Def("schema", fields))
        return sid

    def _new_channel(self, topic: str, schema: int, metadata: dict[str, str]) -> int:
        chan = len(self._channels) + len(self._log_channels) + 1
        if chan > _MAX_CHANNELS:
            return 0
        fields = {"id": chan, "topic": topic, "message_encoding": "json", "schema_id": schema, "metadata": metadata}
        self._defs.append(_Def("channel", fields))
        return chan

    def _channel(self, key: tuple[type[Message], str, int]) -> int:
        cls, source, incarnation = key
        metadata = {
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "severity": _severity_name(cls.severity),
            "source": source,
            "worker": source if incarnation else "",
            "incarnation": str(incarnation) if incarnation else "",
        }
        chan = self._new_channel(cls.name, self._schema(cls), metadata)
        if chan:
            self._channels[key] = chan
        return chan

    def _foreign_channel(self, name: str, severity: int, source: str, worker: str, incarnation: int) -> int:
        sid = self._schema_ids.get(name)
        if sid is None:
            sid = self._schema_ids[name] = len(self._schema_ids) + 2
            data = json.dumps({"title": name, "type": "object"}).encode()
            self._defs.append(_Def("schema", {"id": sid, "name": name, "encoding": "jsonschema", "data": data}))
        metadata = {
            "class": "",
            "severity": _severity_name(severity),
            "source": source,
            "worker": worker,
            "incarnation": str(incarnation) if incarnation else "",
        }
        chan = self._new_channel(name, sid, metadata)
        if chan:
            self._channels[(name, source, incarnation)] = chan
        return chan

    def _log_channel(self, worker: str) -> int:
        if not self._log_schema:
            self._log_schema = 1
            data = json.dumps(_LOG_SCHEMA, separators=(",", ":")).encode()
            self._defs.append(_Def("schema", {"id": 1, "name": "foxglove.Log", "encoding": "jsonschema", "data": data}))
        chan = self._new_channel(LOG_TOPIC, 1, {"worker": worker})
        if chan:
            self._log_channels[worker] = chan
        return chan

    def _trigger(self, payload: Message) -> None:
        if isinstance(payload, m.WorkerExited) and not payload.abnormal:
            return
        worker: str = getattr(payload, "worker", "")
        now = time.monotonic()
        last = self._last_incident.get(worker)
        if last is not None and now - last < max(_INCIDENT_GAP, self.options.snapshot):
            return  # the same incident (hung, then exited, then given up on), or a crash loop
        self._last_incident[worker] = now
        # After the message that reports it: the writer that sees the incident has the message.
        self._incidents.append((worker, _dt.datetime.now(_dt.UTC)))
        self._wakeup.set()

    # ---- the writer thread -----------------------------------------------------------------

    def close(self) -> None:
        """Write what is queued, finish the file (a complete MCAP file) and end the writer thread."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        self._thread.join(_CLOSE_WAIT)  # a disk that hangs must not hang shutdown

    def _take(self) -> tuple[_Batch, list[_Def], list[tuple[str, _dt.datetime]]]:
        """What the tap queued, the channels it needs, and the incidents it reported."""
        # Incidents first: each comes after the message that reports it, so that message is taken too.
        incidents = [self._incidents.popleft() for _ in range(len(self._incidents))]
        queue = self._queue
        parts = list(queue)  # one C call: atomic while the tap appends
        for _ in range(len(parts)):
            queue.popleft()
        # After the messages: every channel they use was made before them.
        defs = self._defs[:]
        batch = _Batch(b"".join(parts), len(parts))
        self._taken += len(parts)
        if parts:
            batch.first = _FIRST_TIME.unpack_from(parts[0], 15)[0]
            batch.last = _FIRST_TIME.unpack_from(parts[-1], 15)[0]
        self._written_bytes += len(batch.data)
        return batch, defs, incidents

    def _run(self) -> None:
        while True:
            closing = self._closing
            if not closing:
                self._wakeup.wait(FLUSH_PERIOD)
                self._wakeup.clear()
            batch, defs, incidents = self._take()
            batch.taken = time.monotonic()
            drops = self.dropped + self.dropped_upstream + self.lost
            try:
                self._write(batch, defs, drops, closing)
            except Exception as exc:  # a full disk, a removed directory: count, say so, and go on
                self._lost(batch, f"{type(exc).__name__}: {exc}")
            self._keep(batch)
            for worker, when in incidents:
                try:
                    self._write_incident(worker, when, defs)
                except Exception as exc:
                    self._fail(f"cannot write the incident snapshot of {worker!r}: {type(exc).__name__}: {exc}")
            if closing:
                file, self._file = self._file, None
                if file is not None:
                    file.finish()
                return

    def _lost(self, batch: _Batch, error: str) -> None:
        """``batch`` could not be written: its messages count as dropped; the next batch starts a new file."""
        self.lost += batch.messages
        file, self._file = self._file, None
        if file is not None:
            try:
                os.close(file.fd)  # a record may be cut short in it: what follows goes to a new file
            except OSError:
                pass
            self.index += 1
        self._fail(error)

    def _fail(self, error: str) -> None:
        """Report a failure: the first at once, then at most one per :data:`_REPORT_PERIOD`."""
        now = time.monotonic()
        if self._report is None or now - self._reported < _REPORT_PERIOD:
            return
        self._reported = now
        try:
            self._report(error)
        except Exception:
            pass

    def _write(self, batch: _Batch, defs: list[_Def], drops: int, closing: bool) -> None:
        file = self._file
        if file is None:
            if self.options.path is None:
                return
            file = self._open()  # the last file could not be made: try again
        opts = self.options
        if batch.messages and (
            (opts.max_bytes is not None and file.size >= opts.max_bytes)
            or (opts.max_seconds is not None and time.monotonic() - file.opened >= opts.max_seconds)
        ):
            self._file = None
            file.finish()
            self.index += 1
            file = self._open()
        file.add_defs(defs)
        file.add(batch)
        if drops != self._recorded_drops or closing:
            self._write_drops(file, drops)

    def _write_drops(self, file: _File, drops: int) -> None:
        """Write the drop count as a ``recorder.dropped`` message (it changed, or the file ends)."""
        self._recorded_drops = drops
        now = time.time_ns()
        self._drop_seq += 1
        data = _encoder.encode(m.RecorderDropped(count=drops, total=self.total))
        record = (
            _MSG_HEAD.pack(_OP_MESSAGE, _MSG_FIXED + len(data), self._drop_channel, self._drop_seq, now, now) + data
        )
        own = _Batch(record, 1)
        own.first = own.last = now
        file.add(own)

    def _open(self) -> _File:
        path = self._path(self.index)
        try:
            file = _File(path, self._defs[:], self.library)
        except OSError as exc:
            raise ConfigError(f"record: cannot write {path}: {exc.strerror or exc}") from None
        self._file = file
        self.files.append(path)
        self._cap()
        return file

    def _path(self, index: int) -> Path:
        assert self.options.path is not None
        path = Path(self.options.path)
        if not index:
            return path
        return path.with_name(f"{path.stem}.{index}{path.suffix or '.mcap'}")

    def _cap(self) -> None:
        cap = self.options.max_total
        if cap is None:
            return
        sizes = []
        for path in self.files:
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                sizes.append(0)
        total = sum(sizes)
        # The current file is never deleted: the cap holds from its rotation on.
        while len(self.files) > 1 and total > cap:
            oldest = self.files.pop(0)
            total -= sizes.pop(0)
            try:
                oldest.unlink()
            except OSError:
                pass

    def _keep(self, batch: _Batch) -> None:
        if not self._snapshot:
            return
        if batch.messages:
            self._ring.append(batch)
            self._ring_bytes += len(batch.data)
        horizon = time.monotonic() - self.options.snapshot
        ring = self._ring
        while ring and (ring[0].taken < horizon or self._ring_bytes > self.options.snapshot_bytes):
            self._ring_bytes -= len(ring.popleft().data)

    def _write_incident(self, worker: str, when: _dt.datetime, defs: list[_Def]) -> None:
        """Write the recent past (the ring) as ``WORKER-TIME.mcap`` in the snapshot directory."""
        directory = Path(self.options.snapshot_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{_safe_name(worker)}-{when.strftime('%Y%m%dT%H%M%S.%fZ')}.mcap"
        file = _File(path, defs, self.library)
        try:
            for batch in self._ring:
                file.add(batch)
        finally:
            file.finish()
        self.incidents.append(path)
        self._cap_incidents(directory)

    def _cap_incidents(self, directory: Path) -> None:
        cap = self.options.max_total
        if cap is None:
            return
        total = sum(p.stat().st_size for p in self.incidents if p.exists())
        while len(self.incidents) > 1 and total > cap:
            oldest = self.incidents.pop(0)
            try:
                total -= oldest.stat().st_size
                oldest.unlink()
            except OSError:
                pass


def _exact_ns(stamp: float) -> int:
    """UNIX time ``stamp`` in ns, rounded to the microsecond exactly as ``datetime.fromtimestamp`` rounds it."""
    frac, whole = math.modf(stamp)
    return (int(whole) * 1_000_000 + round(frac * 1e6)) * 1000


def _severity_name(severity: int) -> str:
    try:
        return Severity(severity).name
    except ValueError:
        return str(severity)

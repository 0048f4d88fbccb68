"""Recordings for the tests: MCAP files written with the ``mcap`` package's own Writer, in the agreed format.

The format (one schema per message class, one channel per name, source and
incarnation, JSON data, ``log_time`` the dispatch time, ``publish_time`` the
event's time) is the flight recorder's. ``record_run`` records what a real
Runtime, with real worker processes, dispatched: an EventBus subscriber sees
every message in dispatch order, as the recorder does.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import msgspec
from mcap.writer import Writer

from bussdcc import Event, Message, Runtime, message
from bussdcc._version import __version__


def _schema(cls: type[Message]) -> bytes:
    try:
        schema = msgspec.json.schema(cls)
    except TypeError:  # a field msgspec has no schema for (a nested Event)
        return msgspec.json.encode({"title": cls.__name__, "type": "object"})
    ref = schema.get("$ref", "")
    defs = schema.get("$defs", {})
    body = dict(defs.get(ref.rpartition("/")[2], schema))
    rest = {k: v for k, v in defs.items() if k != ref.rpartition("/")[2]}
    if rest:
        body["$defs"] = rest
    return msgspec.json.encode(body)


def _enc(obj: Any) -> Any:
    return repr(obj)  # values JSON cannot hold (a nested Event) travel as their repr


def _ns(t: _dt.datetime) -> int:
    return round(t.timestamp() * 1_000_000) * 1000


class McapRecorder:
    """Writes messages, worker output lines and drop counts in the recording format."""

    def __init__(self, out: str | Path | IO[bytes], *, chunked: bool = False, chunk_size: int = 4096) -> None:
        self._file: IO[bytes] = open(out, "wb") if isinstance(out, str | Path) else out  # noqa: SIM115
        self.writer = Writer(self._file, use_chunking=chunked, chunk_size=chunk_size)
        self.writer.start(profile="", library=f"bussdcc {__version__}")
        self._schemas: dict[str, int] = {}
        self._channels: dict[tuple[str, str, str], int] = {}
        self._log_channel = 0
        self.count = 0

    def _channel(self, cls: type[Message], source: str, worker: str, incarnation: str) -> int:
        key = (cls.name, source, incarnation)
        if key not in self._channels:
            if cls.name not in self._schemas:
                self._schemas[cls.name] = self.writer.register_schema(cls.name, "jsonschema", _schema(cls))
            meta = {
                "class": f"{cls.__module__}:{cls.__qualname__}",
                "severity": cls.severity.name,
                "source": source,
                "worker": worker,
                "incarnation": incarnation,
            }
            self._channels[key] = self.writer.register_channel(cls.name, "json", self._schemas[cls.name], meta)
        return self._channels[key]

    def event(
        self, evt: Event[Message], *, log_time: int | None = None, worker: str = "", incarnation: int | None = None
    ) -> None:
        """Record ``evt`` as dispatched at ``log_time`` (ns; default now)."""
        self.message(
            evt.payload,
            source=evt.source,
            time=evt.time,
            log_time=log_time,
            worker=worker,
            incarnation=incarnation,
        )

    def message(
        self,
        msg: Message,
        *,
        source: str = "runtime",
        time: _dt.datetime | None = None,
        log_time: int | None = None,
        worker: str = "",
        incarnation: int | None = None,
        class_path: str | None = None,
        data: bytes | None = None,
    ) -> None:
        """Record ``msg`` (``class_path`` and ``data`` override what is written, to make odd recordings)."""
        stamp = time or _dt.datetime.now(_dt.UTC)
        chan = self._channel(type(msg), source, worker, "" if incarnation is None else str(incarnation))
        if class_path is not None:
            chan = self._odd_channel(type(msg), source, class_path)
        body = data if data is not None else msgspec.json.encode(msg.to_dict(), enc_hook=_enc)
        self.count += 1
        self.writer.add_message(
            chan,
            log_time=log_time if log_time is not None else _ns(_dt.datetime.now(_dt.UTC)),
            data=body,
            publish_time=_ns(stamp),
            sequence=self.count,
        )

    def _odd_channel(self, cls: type[Message], source: str, class_path: str) -> int:
        meta = {"class": class_path, "severity": "INFO", "source": source, "worker": "", "incarnation": ""}
        schema = self.writer.register_schema(cls.name + ".odd", "jsonschema", b"{}")
        return self.writer.register_channel(cls.name, "json", schema, meta)

    def raw(
        self,
        topic: str,
        data: bytes,
        *,
        class_path: str,
        severity: str = "INFO",
        source: str = "runtime",
        worker: str = "",
    ) -> None:
        """Record a message of a class this process does not know (by name and class path only)."""
        key = (topic, source, "raw")
        if key not in self._channels:
            schema = self.writer.register_schema(topic, "jsonschema", b'{"type": "object"}')
            meta = {"class": class_path, "severity": severity, "source": source, "worker": worker, "incarnation": ""}
            self._channels[key] = self.writer.register_channel(topic, "json", schema, meta)
        self.count += 1
        now = _ns(_dt.datetime.now(_dt.UTC))
        self.writer.add_message(self._channels[key], log_time=now, data=data, publish_time=now, sequence=self.count)

    def log_line(self, worker: str, line: str, *, stream: str = "stdout") -> None:
        """A line of worker output on /bussdcc/log (foxglove.Log)."""
        if not self._log_channel:
            schema = self.writer.register_schema("foxglove.Log", "jsonschema", b'{"type": "object"}')
            self._log_channel = self.writer.register_channel("/bussdcc/log", "json", schema, {"worker": worker})
        now = time.time_ns()
        record = {
            "timestamp": {"sec": now // 1_000_000_000, "nsec": now % 1_000_000_000},
            "level": 2 if stream == "stdout" else 3,
            "message": line,
            "name": worker,
            "file": stream,
            "line": 0,
        }
        self.writer.add_message(self._log_channel, log_time=now, data=msgspec.json.encode(record), publish_time=now)

    def flush(self) -> None:
        """Put what was added on disk (unchunked, the writer has written it already; mcap < 1.6 has no flush)."""
        flush = getattr(self.writer, "flush", None)
        if flush is not None:
            flush()
        self._file.flush()

    def abandon(self) -> None:
        """Close the file as a killed recorder leaves it: no summary, no footer, an open chunk unwritten."""
        self._file.close()

    def close(self) -> None:
        """Finish the file (summary, footer) and close it."""
        self.writer.finish()  # type: ignore[no-untyped-call]
        self._file.close()


def write_recording(path: Path, events: list[tuple[Event[Message], int | None, str]], *, chunked: bool = False) -> Path:
    """A finished recording of ``events``: (event, log_time ns or None for its own time, worker or "")."""
    rec = McapRecorder(path, chunked=chunked)
    for evt, log_time, worker in events:
        rec.event(evt, log_time=log_time if log_time is not None else _ns(evt.time), worker=worker)
    rec.close()
    return path


@contextmanager
def recording_of(rt: Runtime, path: Path) -> Iterator[McapRecorder]:
    """Record every message ``rt`` dispatches (subscribe before boot to have the whole run)."""
    rec = McapRecorder(path)
    workers: set[str] = set()

    def on_event(evt: Event[Message]) -> None:
        payload = evt.payload
        if isinstance(payload, message.WorkerStarted):
            workers.add(payload.worker)
        worker = evt.source if evt.source in workers else ""
        incarnation = None
        if worker:
            try:
                incarnation = rt.worker(worker).incarnation
            except Exception:
                incarnation = None
        rec.event(evt, log_time=time.time_ns(), worker=worker, incarnation=incarnation)

    sub = rt.events.subscribe(Message, on_event)
    try:
        yield rec
    finally:
        sub.cancel()
        rec.close()

"""Reading recordings: the MCAP files the flight recorder writes, finished or cut short by a crash.

Pure reading, shared by ``bussdcc events --file`` and replay: no zmq, and the
``mcap`` package is imported only when a recording is opened. Whether a file is
finished is asked of ``mcap.reader.make_reader`` (its summary and footer are
there); its messages are read with ``mcap.stream_reader.StreamReader`` either way,
in file order, which is dispatch order, one record at a time (the indexed reader's
file-order mode loads every chunk before it yields the first message; its
log-time order is not dispatch order if the wall clock stepped back). A file
without its summary (the recorder was killed) is read up to the first record it
does not hold whole, quietly.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from ..errors import RecordingError

__all__ = ["DROPPED_TOPIC", "LOG_TOPIC", "Recorded", "RecordedFile", "ns_to_datetime"]

#: The topic of worker output lines (foxglove.Log); these were never dispatched.
LOG_TOPIC = "/bussdcc/log"
#: The topic on which the recorder counts what it had to drop.
DROPPED_TOPIC = "recorder.dropped"

_MAGIC = b"\x89MCAP0\r\n"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def ns_to_datetime(ns: int) -> _dt.datetime:
    """Nanoseconds since the epoch as an aware UTC datetime (to the microsecond, exactly)."""
    return _EPOCH + _dt.timedelta(microseconds=round(ns / 1000))


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded message: its topic (the message name), its JSON ``data``, times and channel metadata."""

    topic: str
    data: bytes
    #: Dispatch time, ns since the epoch.
    log_time: int
    #: The event's own time (``Event.time``), ns since the epoch.
    publish_time: int
    sequence: int
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """Who emitted it: ``"runtime"``, a worker's name, a Process's name."""
        return self.meta.get("source") or self.meta.get("worker") or "runtime"

    @property
    def worker(self) -> str:
        """The worker whose process emitted it, or ``""``."""
        return self.meta.get("worker", "")

    @property
    def severity(self) -> str:
        """The severity's name, as recorded."""
        return self.meta.get("severity", "INFO")

    def payload(self) -> Any:
        """The recorded fields (raises ``ValueError`` if they are not JSON, or nest too deep to read)."""
        try:
            return json.loads(self.data)
        except RecursionError:
            # Data from a file: nesting deeper than the interpreter recurses is unreadable, not a crash.
            raise ValueError("the recorded fields nest too deep to read") from None


class _Cut(Exception):
    """The file ends inside a record."""


class _Exact:
    """A file whose reads return everything asked for, or raise :class:`_Cut` (a record cut short)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if n > 0 and len(data) < n:
            raise _Cut
        return data


def _mcap() -> Any:
    try:
        import mcap.reader
        import mcap.records
        import mcap.stream_reader
    except ImportError:
        raise RecordingError("reading recordings needs the mcap package: pip install 'bussdcc[record]'") from None
    return mcap


class RecordedFile:
    """A recording on disk; iterate it for its :class:`Recorded` messages, in the order written.

    After iterating, ``finished`` says whether the file was complete and ``truncated``
    whether it ended inside a record (what precedes that record was read).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.finished = False
        self.truncated = False
        try:
            with self.path.open("rb") as f:
                head = f.read(len(_MAGIC))
        except OSError as exc:
            raise RecordingError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if not _MAGIC.startswith(head) or (len(head) == len(_MAGIC) and head != _MAGIC):
            raise RecordingError(f"{self.path} is not an MCAP recording")

    def __iter__(self) -> Iterator[Recorded]:
        mcap = _mcap()
        with self.path.open("rb") as f:
            self.finished = self._has_summary(mcap, f)
            f.seek(0)
            yield from self._stream(mcap, f)

    @staticmethod
    def _has_summary(mcap: Any, f: IO[bytes]) -> bool:
        """Whether the file is finished (its footer is there): the indexed reader applies."""
        f.seek(0, 2)
        if f.tell() < 2 * len(_MAGIC):
            return False
        f.seek(-len(_MAGIC), 2)
        if f.read(len(_MAGIC)) != _MAGIC:
            return False
        f.seek(0)
        try:
            mcap.reader.make_reader(f).get_summary()
        except Exception:  # a footer that is not one: read it as a stream
            return False
        return True

    def _stream(self, mcap: Any, f: IO[bytes]) -> Iterator[Recorded]:
        records = mcap.stream_reader.StreamReader(cast(IO[bytes], _Exact(f)), skip_magic=False).records
        channels: dict[int, Any] = {}
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except _Cut:
                self.truncated = True
                return
            except Exception:
                # A record that does not parse (a chunk cut short and padded, a torn length):
                # the tail of a file whose writer died. What came before it stands.
                self.truncated = True
                return
            if isinstance(record, mcap.records.Channel):
                channels[record.id] = record
            elif isinstance(record, mcap.records.Message):
                channel = channels.get(record.channel_id)
                if channel is not None:
                    yield _recorded(channel, record)


def _recorded(channel: Any, message: Any) -> Recorded:
    return Recorded(
        topic=str(channel.topic),
        data=bytes(message.data),
        log_time=int(message.log_time),
        publish_time=int(message.publish_time),
        sequence=int(message.sequence),
        meta=dict(channel.metadata),
    )

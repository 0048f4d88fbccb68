"""``bussdcc events --file``: a recording read with the live command's filters and output."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

from ..errors import BussdccError
from ..kernel import Severity
from ..kernel._readback import LOG_TOPIC, Recorded, RecordedFile, ns_to_datetime
from . import _render

#: foxglove.Log levels (1 DEBUG ... 5 FATAL) as severities.
_LOG_LEVELS = {1: "DEBUG", 2: "INFO", 3: "WARNING", 4: "ERROR", 5: "CRITICAL"}


def _stamp(ns: int) -> str:
    return ns_to_datetime(ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_of(rec: Recorded) -> dict[str, Any]:
    """A recorded message as the live command shows one: time, name, severity, source, payload."""
    try:
        payload = rec.payload()
    except ValueError:
        payload = rec.data.decode("utf-8", "replace")
    if rec.topic == LOG_TOPIC and isinstance(payload, dict):
        # A line of worker output: shown as the live stream shows it (worker.output).
        worker = str(payload.get("name", rec.meta.get("worker", "")))
        return {
            "time": _stamp(rec.log_time),
            "name": "worker.output",
            "severity": _log_level(payload.get("level", 2)),
            "source": worker,
            "payload": {"worker": worker, "stream": payload.get("file", ""), "line": payload.get("message", "")},
        }
    return {
        "time": _stamp(rec.publish_time),
        "name": rec.topic,
        "severity": rec.severity,
        "source": rec.source,
        "payload": payload,
    }


def _log_level(level: object) -> str:
    """A foxglove.Log level as a severity's name (INFO for anything else: the file may hold any JSON)."""
    return _LOG_LEVELS.get(level, "INFO") if isinstance(level, int) else "INFO"


def _severity(name: str) -> int:
    try:
        return int(Severity[name])
    except KeyError:
        return int(Severity.INFO)


def events_file(args: argparse.Namespace) -> int:
    """Print the messages of one or more recordings, filtered as ``bussdcc events`` filters."""
    if args.follow:
        raise BussdccError("-f follows a live runtime; --file reads a recording")
    minimum = Severity[args.severity]
    recordings = [RecordedFile(path) for path in args.file]  # each checked before anything is printed
    # -n N: the last N matching messages, -n 0 none, as live; -n all (None): every one, as it is read.
    last: deque[str] | None = None if args.lines is None else deque(maxlen=args.lines)
    for line in _lines(recordings, minimum, args.pattern, args.json):
        if last is not None:
            last.append(line)
        else:
            print(line, flush=False)
    for line in last or ():
        print(line)
    sys.stdout.flush()
    for recording in recordings:
        if recording.truncated or not recording.finished:
            print(
                f"-- {recording.path} was not finished (its recorder stopped without closing it): "
                "read up to its last complete record",
                file=sys.stderr,
                flush=True,
            )
    return 0


def _lines(recordings: list[RecordedFile], minimum: int, pattern: str | None, as_json: bool) -> Iterator[str]:
    for recording in recordings:
        for rec in recording:
            record = record_of(rec)
            if _severity(record["severity"]) < minimum:
                continue
            if pattern and not fnmatch.fnmatchcase(record["name"], pattern):
                continue
            yield json.dumps(record, default=str) if as_json else _render.event_line(record)

"""Replay: a recording fed, in order, to a runtime's Processes and Interfaces, under recorded time.

Runs on the thread that calls :meth:`Runtime.replay`; no worker is started, no
fork server, hub or control endpoint exists. Every recorded message is dispatched
through the runtime's one :class:`Dispatch` (EventBus, then every Process and
Interface, in the live order), except what the replayed Processes and Interfaces
produce again themselves: the messages they emitted, and the runtime's reports
about them (``process.started``/``stopped``/``error``, ``interface.*``,
``event.subscriber_error``). Those are produced live, by the handlers, as they
were the first time; the recorded ones only mark where a component starts and stops.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import logging
import threading
import time
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ..errors import ProtocolError, UnknownMessage
from ..kernel import Event, Message
from ..kernel._frames import dec_hook
from ..kernel._message import message_class
from ..kernel._readback import DROPPED_TOPIC, LOG_TOPIC, Recorded, RecordedFile, ns_to_datetime
from ._dispatch import Dispatch, Receiver

log = logging.getLogger("bussdcc.replay")

#: Messages the runtime emits about a Process or Interface: (the field naming it, what it marks).
_ABOUT_RECEIVER: dict[str, tuple[str, str]] = {
    "process.started": ("process", "start"),
    "process.error": ("process", ""),
    "process.stopped": ("process", "stop"),
    "interface.started": ("interface", "start"),
    "interface.error": ("interface", ""),
    "interface.stopped": ("interface", "stop"),
}
#: Reported by the parent's own EventBus when a subscriber raises: the replayed bus does that again.
_SUBSCRIBER_ERROR = "event.subscriber_error"
#: The longest single wait (s): a slow speed makes recorded gaps longer than a timeout can hold.
_LONGEST_WAIT = 3600.0


@dataclass
class ReplayReport:
    """What a replay did: messages fed, produced again, left out, unreadable; and whether it ran to the end."""

    #: Recorded messages dispatched to the Processes and Interfaces.
    fed: int = 0
    #: Recorded messages not fed because the replayed Processes and Interfaces produced them again.
    reproduced: int = 0
    #: Recorded messages left out by the ``names`` filter.
    filtered: int = 0
    #: Recorded messages that could not be rebuilt into their class, per message name (skipped).
    unreadable: dict[str, int] = field(default_factory=dict)
    #: Recorded messages fed without the nested event they carried (recorded as text), per message name.
    without_event: dict[str, int] = field(default_factory=dict)
    #: Worker output lines in the recording (never dispatched, live or replayed).
    log_lines: int = 0
    #: Messages the recorder said it had to drop while recording.
    recorder_dropped: int = 0
    #: Files that ended inside a record (a recorder that was killed): read up to that record.
    truncated: list[str] = field(default_factory=list)
    #: Recorded time covered, first to last message fed or reproduced (seconds).
    span: float = 0.0
    #: Why the replay ended before the end of the recording (a shutdown asked for), else None.
    stopped: str | None = None
    #: The Processes and Interfaces that ran.
    receivers: list[str] = field(default_factory=list)
    #: The target's Services and Devices, which did not run (their recorded messages were fed).
    workers: list[str] = field(default_factory=list)


class ReplayClock:
    """A clock that follows recorded time: ``now_utc()`` is the dispatch time of the message being replayed.

    ``monotonic()`` and ``uptime()`` count recorded seconds since the first message.
    ``sleep`` waits ``seconds / speed`` of real time (not at all with ``speed=None``,
    the ``--fast`` replay); recorded time moves only with the recording.
    """

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self._ns = 0
        self._origin: int | None = None

    def follow(self, ns: int) -> None:
        """Show the recorded time ``ns`` (never backwards)."""
        if self._origin is None:
            self._origin = ns
        self._ns = max(self._ns, ns)

    def now_utc(self) -> _dt.datetime:
        """The recorded time now shown, timezone-aware UTC."""
        return ns_to_datetime(self._ns)

    def monotonic(self) -> float:
        """Recorded seconds since the recording's first message."""
        return (self._ns - (self._origin or self._ns)) / 1e9

    def uptime(self) -> float:
        """Recorded seconds since the recording's first message."""
        return self.monotonic()

    def sleep(self, seconds: float, cancel: threading.Event | None = None) -> bool:
        """Wait ``seconds / speed`` (no time at all when replaying as fast as possible)."""
        if self.speed is None:
            return bool(cancel is not None and cancel.is_set())
        end = time.monotonic() + max(0.0, seconds) / self.speed
        while (left := end - time.monotonic()) > 0:
            if cancel is None:
                time.sleep(min(left, _LONGEST_WAIT))
            elif cancel.wait(min(left, _LONGEST_WAIT)):
                return True
        return bool(cancel is not None and cancel.is_set())


class _Unbuildable(Exception):
    """A recorded message that cannot be made into its class again."""


def _class_of(rec: Recorded) -> type[Message]:
    """The class registered under the recorded name: what the target imported, never what the file names.

    A recording can come from anyone: importing the module it names would run that module's code.
    """
    try:
        return message_class(rec.topic)
    except UnknownMessage:
        pass
    path = rec.meta.get("class", "")
    if not path:
        raise _Unbuildable(f"no message class is registered under {rec.topic!r} and the recording names none")
    module = path.partition(":")[0]
    raise _Unbuildable(
        f"no message class is registered under {rec.topic!r}; the recording says {path}: "
        f"import {module} in the target to replay them"
    )


_event_fields: dict[type, tuple[str, ...]] = {}


def _optional_event_fields(cls: type[Message]) -> tuple[str, ...]:
    """The fields of ``cls`` that hold an ``Event`` or None, defaulting to None (``process.error``'s ``evt``)."""
    found = _event_fields.get(cls)
    if found is None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:
            hints = {}
        found = tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is None
            and Event in {typing.get_origin(t) or t for t in typing.get_args(hints.get(f.name)) or (hints.get(f.name),)}
        )
        _event_fields[cls] = found
    return found


def rebuild(rec: Recorded) -> tuple[Message, bool]:
    """The message ``rec`` recorded, as an instance of its class, and whether it lost a nested event.

    A nested ``Event`` is recorded as its text: the message is rebuilt without it
    (``None``, its default). Raises ``_Unbuildable`` for what cannot be rebuilt at all.
    """
    cls = _class_of(rec)
    try:
        fields = msgspec.json.decode(rec.data)
        lossy = False
        if isinstance(fields, dict):
            for name in _optional_event_fields(cls):
                if isinstance(fields.get(name), str):
                    fields[name] = None
                    lossy = True
        return msgspec.convert(fields, cls, dec_hook=dec_hook), lossy
    except (
        msgspec.DecodeError,
        msgspec.ValidationError,
        TypeError,
        ValueError,
        NotImplementedError,
        RecursionError,  # fields nested deeper than the decoder recurses
    ) as exc:
        raise _Unbuildable(f"its recorded fields do not fit {cls.__module__}.{cls.__qualname__}: {exc}") from None


class Replay:
    """One replay of one or more recording files into the receivers of a runtime (see the module's docstring)."""

    def __init__(
        self,
        dispatch: Dispatch,
        receivers: Sequence[Receiver],
        clock: ReplayClock,
        names: Iterable[str] = (),
        workers: Iterable[str] = (),
    ) -> None:
        self.dispatch = dispatch
        self.receivers = {rec.name: rec for rec in receivers}
        self.order = tuple(receivers)
        self.clock = clock
        self.names = tuple(names)
        self.report = ReplayReport(receivers=[rec.name for rec in receivers], workers=list(workers))
        self._cancel = threading.Event()
        self._started: set[str] = set()
        self._stopped: set[str] = set()
        self._first: int | None = None
        self._last = 0
        self._wall0 = 0.0

    def cancel(self, reason: str | None) -> None:
        """End the replay at the next message (from any thread, handlers too)."""
        if self.report.stopped is None:
            self.report.stopped = reason or "shutdown requested"
        self._cancel.set()

    def run(self, paths: Sequence[str | Path]) -> ReplayReport:
        """Feed every recording in ``paths``, in order; return the report."""
        self.dispatch.receivers = self.order
        try:
            for rec in self._messages(paths):
                if self._cancel.is_set():
                    break
                self._one(rec)
        finally:
            for receiver in reversed(self.order):
                if receiver.name in self._started and receiver.name not in self._stopped:
                    self._stopped.add(receiver.name)
                    self.dispatch.stop_receiver(receiver)
            self.dispatch.receivers = ()
        if self._first is not None:
            self.report.span = (self._last - self._first) / 1e9
        return self.report

    def _messages(self, paths: Sequence[str | Path]) -> Iterator[Recorded]:
        recordings = [RecordedFile(path) for path in paths]  # every file checked before anything is fed
        for recording in recordings:
            yield from recording
            if recording.truncated:
                self.report.truncated.append(str(recording.path))

    def _one(self, rec: Recorded) -> None:
        if rec.topic == LOG_TOPIC:
            self.report.log_lines += 1
            return
        if rec.topic == DROPPED_TOPIC:
            self._dropped(rec)
            return
        self._wait(rec.log_time)
        if self._cancel.is_set():
            return
        self.clock.follow(rec.log_time)
        if self._first is None:
            self._first = rec.log_time
            if rec.topic != "runtime.booting":
                # Recorded from the middle of a run: everything is started before the first message.
                self._start_all()
        self._last = max(self._last, rec.log_time)
        mark = self._mark(rec)
        if mark is not None:
            name, what = mark
            if what == "start" and name not in self._started:
                self._start(name)
            elif what == "stop" and name in self._started and name not in self._stopped:
                self._stopped.add(name)
                self.dispatch.stop_receiver(self.receivers[name])
            self.report.reproduced += 1
            return
        if rec.topic == "runtime.booted":
            self._start_all()  # live, every Process and Interface had started by now
        if not rec.worker and (rec.source in self.receivers or rec.topic == _SUBSCRIBER_ERROR):
            self.report.reproduced += 1
            return
        if self.names and not any(fnmatch.fnmatchcase(rec.topic, glob) for glob in self.names):
            self.report.filtered += 1
            return
        try:
            message, lossy = rebuild(rec)
            self.dispatch.dispatch(Event(message, ns_to_datetime(rec.publish_time), rec.source))
        except _Unbuildable as exc:
            self._unreadable(rec.topic, str(exc))
            return
        except ProtocolError as exc:  # rebuilt, but no longer encodable (too large, say)
            self._unreadable(rec.topic, str(exc))
            return
        self.report.fed += 1
        if lossy:
            self.report.without_event[rec.topic] = self.report.without_event.get(rec.topic, 0) + 1

    def _mark(self, rec: Recorded) -> tuple[str, str] | None:
        """For the runtime's reports about a replayed Process or Interface: its name and what it marks."""
        about = _ABOUT_RECEIVER.get(rec.topic)
        if about is None or rec.worker:
            return None
        try:
            payload = rec.payload()
        except ValueError:
            return None
        name = payload.get(about[0]) if isinstance(payload, dict) else None
        if not isinstance(name, str) or name not in self.receivers:
            return None
        what = about[1]
        if rec.topic.endswith(".error") and payload.get("evt") is None and name not in self._started:
            what = "start"  # it failed to start, live: this is where it was started
        return name, what

    def _start(self, name: str) -> None:
        self._started.add(name)
        self.dispatch.start_receiver(self.receivers[name])

    def _start_all(self) -> None:
        for receiver in self.order:
            if receiver.name not in self._started:
                self._start(receiver.name)

    def _wait(self, ns: int) -> None:
        speed = self.clock.speed
        if speed is None:
            return
        if self._first is None:
            self._wall0 = time.monotonic()
            return
        due = self._wall0 + (ns - self._first) / 1e9 / speed
        while (delay := due - time.monotonic()) > 0 and not self._cancel.is_set():
            self._cancel.wait(min(delay, _LONGEST_WAIT))

    def _dropped(self, rec: Recorded) -> None:
        try:
            payload = rec.payload()
            count = int(payload["count"])
        except (ValueError, TypeError, KeyError, OverflowError):  # OverflowError: a count of inf
            return
        # Written whenever the count changes and when a file ends: the last one says it all.
        self.report.recorder_dropped = max(self.report.recorder_dropped, count)

    def _unreadable(self, name: str, why: str) -> None:
        counts = self.report.unreadable
        if name not in counts:
            log.warning("replay: recorded %r messages are skipped: %s", name, why)
        counts[name] = counts.get(name, 0) + 1


def validate_speed(speed: float | None) -> float | None:
    """``speed`` as given, if it is a positive finite number (None: as fast as possible)."""
    if speed is None:
        return None
    if not isinstance(speed, int | float) or not speed > 0 or speed == float("inf"):
        raise ValueError(f"speed must be a positive number, not {speed!r}")
    return float(speed)

"""An emitted message together with when and where it was emitted."""

from __future__ import annotations

import datetime as _dt
from typing import Any, Generic, TypeVar

from ._message import Message

__all__ = ["Event"]

M_co = TypeVar("M_co", bound=Message, covariant=True)

#: Source name of messages emitted by the parent runtime itself.
RUNTIME_SOURCE = "runtime"

_UTC = _dt.UTC
_fromtimestamp = _dt.datetime.fromtimestamp


class Event(Generic[M_co]):
    """A message as dispatched: ``payload``, UTC ``time`` and the ``source`` that emitted it."""

    # ``_time`` is built from ``_ts`` (UNIX seconds) on first read when the event was made
    # from a timestamp (:func:`event_at`): most handlers never look at the time.
    __slots__ = ("_time", "_ts", "payload", "source")

    payload: M_co
    source: str
    _time: _dt.datetime | None
    _ts: float | None

    def __init__(self, payload: M_co, time: _dt.datetime, source: str = RUNTIME_SOURCE) -> None:
        _set_payload(self, payload)
        _set_time(self, time)
        _set_ts(self, None)
        _set_source(self, source)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Event is immutable")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Event is immutable")

    @property
    def time(self) -> _dt.datetime:
        """When the message was emitted (timezone-aware UTC)."""
        t: _dt.datetime | None = self._time
        if t is None:
            t = _fromtimestamp(self._ts, _UTC)  # type: ignore[arg-type]  # set whenever _time is not
            _set_time(self, t)
        return t

    @property
    def name(self) -> str:
        """The payload's message name."""
        return self.payload.name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.payload, self.time, self.source) == (other.payload, other.time, other.source)

    def __hash__(self) -> int:
        return hash((self.payload, self.time, self.source))

    def __repr__(self) -> str:
        return f"Event({self.payload!r}, time={self.time.isoformat()}, source={self.source!r})"


_set_payload: Any = Event.__dict__["payload"].__set__
_set_source: Any = Event.__dict__["source"].__set__
_set_time: Any = Event.__dict__["_time"].__set__
_set_ts: Any = Event.__dict__["_ts"].__set__
_new = object.__new__


def event_at(payload: Message, ts: float, source: str) -> Event[Message]:
    """An Event emitted at UNIX time ``ts``, its ``time`` built only if read (the hot path's constructor)."""
    evt: Event[Message] = _new(Event)
    _set_payload(evt, payload)
    _set_time(evt, None)
    _set_ts(evt, ts)
    _set_source(evt, source)
    return evt


def event_ts(evt: Event[Message]) -> float:
    """The UNIX time of ``evt``, without building its datetime."""
    ts: float | None = evt._ts
    return evt.time.timestamp() if ts is None else ts

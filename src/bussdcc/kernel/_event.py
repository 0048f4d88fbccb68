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


class _Fields:
    """The storage of an :class:`Event`, filled by plain attribute stores before it becomes one (the fast path)."""

    __slots__ = ("_time", "_ts", "payload", "source")


class Event(_Fields, Generic[M_co]):
    """A message as dispatched: ``payload``, UTC ``time`` and the ``source`` that emitted it."""

    # ``_time`` is built from ``_ts`` (UNIX seconds) on first read when the event was made
    # from a timestamp (:func:`event_at`): most handlers never look at the time.
    __slots__ = ()

    payload: M_co
    source: str
    _time: _dt.datetime | None
    _ts: float | None

    def __new__(cls, payload: M_co, time: _dt.datetime, source: str = RUNTIME_SOURCE) -> Event[M_co]:
        evt: Any = _Fields()
        evt.payload = payload
        evt._time = time
        evt._ts = None
        evt.source = source
        evt.__class__ = cls
        made: Event[M_co] = evt
        return made

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Event is immutable")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Event is immutable")

    @property
    def time(self) -> _dt.datetime:
        """When the message was emitted (timezone-aware UTC)."""
        t = self._time
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


_set_time: Any = _Fields.__dict__["_time"].__set__


def event_at(payload: Message, ts: float, source: str) -> Event[Message]:
    """An Event emitted at UNIX time ``ts``, its ``time`` built only if read (the hot path's constructor)."""
    evt: Any = _Fields()
    evt.payload = payload
    evt._time = None
    evt._ts = ts
    evt.source = source
    evt.__class__ = Event
    made: Event[Message] = evt
    return made


def event_ts(evt: Event[Message]) -> float:
    """The UNIX time of ``evt``, without building its datetime."""
    ts = evt._ts
    return evt.time.timestamp() if ts is None else ts

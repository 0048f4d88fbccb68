"""An emitted message together with when and where it was emitted."""

from __future__ import annotations

import datetime as _dt
from typing import Generic, TypeVar

from ._message import Message

__all__ = ["Event"]

M_co = TypeVar("M_co", bound=Message, covariant=True)

#: Source name of messages emitted by the parent runtime itself.
RUNTIME_SOURCE = "runtime"


class Event(Generic[M_co]):
    """A message as dispatched: ``payload``, UTC ``time`` and the ``source`` that emitted it."""

    __slots__ = ("payload", "source", "time")

    payload: M_co
    time: _dt.datetime
    source: str

    def __init__(self, payload: M_co, time: _dt.datetime, source: str = RUNTIME_SOURCE) -> None:
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "source", source)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Event is immutable")

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

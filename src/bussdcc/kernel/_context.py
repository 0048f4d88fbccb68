"""The capability container handed to every component."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ._bus import EventBus
from ._clock import ClockProtocol
from ._message import Message
from ._state import StateStore

__all__ = ["Context", "RuntimeView"]


class RuntimeView(Protocol):
    """What a component may ask of the runtime that hosts it."""

    @property
    def booted(self) -> bool:
        """Whether the runtime has booted and not yet shut down."""
        ...

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint workers talk to the parent on."""
        ...


class Context:
    """Clock, event bus, state, runtime access, and ``emit`` — nothing more."""

    __slots__ = ("_emit", "clock", "events", "runtime", "state")

    def __init__(
        self,
        *,
        clock: ClockProtocol,
        events: EventBus,
        state: StateStore,
        runtime: RuntimeView,
        emit: Callable[[Message], None],
    ) -> None:
        self.clock = clock
        self.events = events
        self.state = state
        self.runtime = runtime
        self._emit = emit

    def emit(self, message: Message) -> None:
        """Hand ``message`` to the runtime, the one authority that dispatches it."""
        if not isinstance(message, Message):
            raise TypeError(f"emit() takes a Message, not {type(message).__name__}")
        self._emit(message)

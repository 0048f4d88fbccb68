"""The capability container handed to every component."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from ._bus import EventBus
from ._clock import ClockProtocol
from ._message import Message
from ._state import StateStore

if TYPE_CHECKING:
    from ._calls import CallPort, DeviceHandle
    from ._components import Device

D = TypeVar("D", bound="Device")

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

    __slots__ = ("_calls", "_emit", "clock", "events", "runtime", "state")

    def __init__(
        self,
        *,
        clock: ClockProtocol,
        events: EventBus,
        state: StateStore,
        runtime: RuntimeView,
        emit: Callable[[Message], None],
        calls: CallPort | None = None,
    ) -> None:
        self.clock = clock
        self.events = events
        self.state = state
        self.runtime = runtime
        self._emit = emit
        self._calls = calls

    def emit(self, message: Message) -> None:
        """Hand ``message`` to the runtime, the one authority that dispatches it."""
        if not isinstance(message, Message):
            raise TypeError(f"emit() takes a Message, not {type(message).__name__}")
        self._emit(message)

    def device(self, cls: type[D], id: str, *, timeout: float = 10.0, wait: bool = False) -> DeviceHandle[D]:
        """A typed handle to call the methods of the device ``id`` (a ``cls``), routed by the runtime."""
        from ._calls import DeviceHandle

        if self._calls is None:
            raise TypeError("this context cannot reach devices (it belongs to no runtime)")
        self._calls.check(cls, id)
        return DeviceHandle(cls, id, self._calls, timeout=timeout, wait=wait)

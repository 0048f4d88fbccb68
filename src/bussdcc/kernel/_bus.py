"""The synchronous, thread-safe, typed in-process event bus."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Generic, TypeVar

from ._builtin import EventSubscriberError
from ._event import Event
from ._message import Message, Severity

__all__ = ["EventBus", "Subscription"]

M = TypeVar("M", bound=Message)
Handler = Callable[[Event[M]], None]


class Subscription(Generic[M]):
    """A handle returned by :meth:`EventBus.subscribe`; ``cancel()`` removes it."""

    __slots__ = ("_bus", "handler", "kind")

    def __init__(self, bus: EventBus, kind: type[M], handler: Handler[M]) -> None:
        self._bus = bus
        self.kind = kind
        self.handler = handler

    def cancel(self) -> None:
        """Stop delivering events to this subscription (idempotent)."""
        self._bus._remove(self)


class EventBus:
    """Delivers events synchronously, in the publisher's thread, to typed subscribers.

    A subscriber that raises is isolated: the failure becomes an
    ``event.subscriber_error`` message handed to ``on_error`` (the runtime
    emits it), unless the event being delivered is already error-level.
    """

    def __init__(self, on_error: Callable[[Message], None] | None = None) -> None:
        self._lock = threading.Lock()
        # Copy-on-write: publishers iterate a tuple without taking the lock.
        self._subs: tuple[Subscription[Message], ...] = ()
        self._on_error = on_error

    def set_error_sink(self, on_error: Callable[[Message], None] | None) -> None:
        """Route subscriber failures to ``on_error`` (the runtime's ``emit``)."""
        self._on_error = on_error

    def subscribe(self, kind: type[M], handler: Handler[M]) -> Subscription[M]:
        """Call ``handler`` for every published event whose payload is a ``kind``."""
        sub: Subscription[M] = Subscription(self, kind, handler)
        with self._lock:
            self._subs = (*self._subs, sub)  # type: ignore[arg-type]
        return sub

    def unsubscribe(self, sub: Subscription[M]) -> None:
        """Remove ``sub`` (idempotent)."""
        self._remove(sub)

    def _remove(self, sub: Subscription[M]) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def __len__(self) -> int:
        return len(self._subs)

    def publish(self, evt: Event[Message]) -> None:
        """Deliver ``evt`` to every matching subscriber, isolating their failures."""
        for sub in self._subs:
            if not isinstance(evt.payload, sub.kind):
                continue
            try:
                sub.handler(evt)
            except Exception as exc:
                if evt.payload.severity >= Severity.ERROR or self._on_error is None:
                    continue
                self._on_error(
                    EventSubscriberError(
                        event=evt.payload.name,
                        handler=getattr(sub.handler, "__qualname__", repr(sub.handler)),
                        error=repr(exc),
                        traceback=traceback.format_exc(),
                    )
                )

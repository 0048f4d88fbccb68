"""Typed messages, their severity, and the name registry used to decode them."""

from __future__ import annotations

import dataclasses
import enum
import threading
from typing import Any, ClassVar

from ..errors import DuplicateMessageName, UnknownMessage

__all__ = ["Message", "Severity", "message_class", "message_names"]


class Severity(enum.IntEnum):
    """How serious a message is; error-level messages never trigger error reports."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50


_registry: dict[str, type[Message]] = {}
_registry_lock = threading.Lock()


def _register(cls: type[Message]) -> None:
    with _registry_lock:
        known = _registry.get(cls.name)
        # @dataclass(slots=True) rebuilds the class from the draft's namespace,
        # so the same definition arrives twice; the rebuilt one shares the
        # draft's very __dataclass_fields__ dict, and replaces it.
        rebuilt = known is not None and cls.__dict__.get("__dataclass_fields__") is known.__dict__.get(
            "__dataclass_fields__", False
        )
        if known is not None and not rebuilt:
            raise DuplicateMessageName(
                f"message name {cls.name!r} of {cls.__module__}.{cls.__qualname__} "
                f"is already used by {known.__module__}.{known.__qualname__}"
            )
        _registry[cls.name] = cls


def message_class(name: str) -> type[Message]:
    """Return the message class registered under ``name``."""
    try:
        return _registry[name]
    except KeyError:
        raise UnknownMessage(name) from None


def message_names() -> frozenset[str]:
    """Return every registered message name."""
    with _registry_lock:
        return frozenset(_registry)


@dataclasses.dataclass(slots=True, frozen=True)
class Message:
    """Base of every message: a frozen dataclass with a unique ``name`` and a ``severity``.

    A subclass that sets no ``name`` is named ``"<module>.<QualifiedName>"``.
    """

    name: ClassVar[str] = "message"
    severity: ClassVar[Severity] = Severity.INFO

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Explicit form: the zero-argument super() breaks in slotted dataclasses.
        super(Message, cls).__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(cls.name, str) or not cls.name:
            raise TypeError(f"{cls.__qualname__}.name must be a non-empty string")
        _register(cls)

    def to_dict(self) -> dict[str, Any]:
        """Return the message's fields as a dict (shallow: nested values are kept as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

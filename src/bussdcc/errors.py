"""The one exception hierarchy of bussdcc."""

from __future__ import annotations

__all__ = [
    "BootError",
    "BussdccError",
    "ConfigError",
    "ControlError",
    "DuplicateMessageName",
    "FrameTooLarge",
    "MalformedFrame",
    "ProtocolError",
    "RegistrationError",
    "RuntimeStateError",
    "StatePathError",
    "UnknownMessage",
    "WorkerStartError",
]


class BussdccError(Exception):
    """Base of every error raised by bussdcc."""


class DuplicateMessageName(BussdccError, TypeError):
    """Two message classes were declared with the same ``name``."""


class ProtocolError(BussdccError):
    """A frame crossing the process boundary was rejected."""


class UnknownMessage(ProtocolError, LookupError):
    """A message name that no class is registered under."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown message name {name!r}")
        self.message_name = name


class FrameTooLarge(ProtocolError):
    """A frame is larger than the protocol's limit."""


class MalformedFrame(ProtocolError):
    """A frame could not be decoded."""


class StatePathError(BussdccError, ValueError):
    """A state path is empty, malformed, or crosses a leaf value."""


class RegistrationError(BussdccError, ValueError):
    """A component could not be registered (duplicate name, bad spec, too late)."""


class RuntimeStateError(BussdccError, RuntimeError):
    """The runtime is not in a state that allows the call."""


class BootError(BussdccError, RuntimeError):
    """The runtime could not boot (run directory, sockets, fork server)."""


class WorkerStartError(BussdccError):
    """A worker process did not report ready in time."""


class ConfigError(BussdccError, ValueError):
    """A system description (a TOML file, a ``module:Class`` target, a JSON config) is invalid."""


class ControlError(BussdccError):
    """A control request could not be made or was refused (no runtime, wrong secret, unknown worker)."""

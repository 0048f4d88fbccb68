"""The one exception hierarchy of bussdcc."""

from __future__ import annotations

__all__ = [
    "BootError",
    "BussdccError",
    "CallArgumentError",
    "ConfigError",
    "ControlError",
    "DeviceCallError",
    "DeviceCrashed",
    "DeviceError",
    "DeviceTimeout",
    "DeviceUnavailable",
    "DuplicateMessageName",
    "FrameTooLarge",
    "MalformedFrame",
    "ProtocolError",
    "RecordingError",
    "RegistrationError",
    "RuntimeStateError",
    "StatePathError",
    "UnknownDevice",
    "UnknownMessage",
    "UnknownMethod",
    "UnknownPeer",
    "UnknownWorker",
    "WorkerStartError",
    "WorkerTimeout",
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


class UnknownPeer(ProtocolError):
    """A frame from a peer that is no verified worker of this runtime (unknown routing id, or a wrong token)."""


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


class UnknownWorker(BussdccError, LookupError):
    """No Service or Device of that name is registered; ``available`` lists those that are."""

    def __init__(self, name: str, available: tuple[str, ...] = ()) -> None:
        known = ", ".join(available) or "none"
        super().__init__(f"unknown worker {name!r} (workers: {known})")
        self.name = name
        self.available = available


class WorkerTimeout(BussdccError, TimeoutError):
    """A worker did not reach the state waited for in time."""


# ---- calls to devices ----------------------------------------------------------------


class DeviceCallError(BussdccError):
    """A call to a device's method did not return a result."""

    def __init__(self, message: str, *, device: str = "", method: str = "") -> None:
        super().__init__(message)
        self.device = device
        self.method = method


class DeviceError(DeviceCallError):
    """The device's method raised; ``remote_type``, ``remote_message`` and ``remote_traceback`` say what."""

    def __init__(
        self,
        message: str,
        *,
        device: str = "",
        method: str = "",
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message, device=device, method=method)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class DeviceTimeout(DeviceCallError, TimeoutError):
    """The call's deadline passed before the device answered."""


class DeviceCrashed(DeviceCallError):
    """The device's process died while the call was in flight; ``reason`` says how."""

    def __init__(self, message: str, *, device: str = "", method: str = "", reason: str = "") -> None:
        super().__init__(message, device=device, method=method)
        self.reason = reason


class DeviceUnavailable(DeviceCallError):
    """The device is not ready to take calls (``state`` is where it is: stopped, failed, backoff...)."""

    def __init__(self, message: str, *, device: str = "", method: str = "", state: str = "") -> None:
        super().__init__(message, device=device, method=method)
        self.state = state


class UnknownDevice(DeviceCallError, LookupError):
    """No device has that id (or it is not of the class asked for); ``available`` lists the ids."""

    def __init__(self, message: str, *, device: str = "", method: str = "", available: tuple[str, ...] = ()) -> None:
        super().__init__(message, device=device, method=method)
        self.available = available


class UnknownMethod(DeviceCallError, LookupError):
    """The device class defines no public method of that name; ``available`` lists those it does."""

    def __init__(self, message: str, *, device: str = "", method: str = "", available: tuple[str, ...] = ()) -> None:
        super().__init__(message, device=device, method=method)
        self.available = available


class CallArgumentError(DeviceCallError, TypeError):
    """The arguments (or the result) of a call cannot be encoded or decoded."""


class ConfigError(BussdccError, ValueError):
    """A system description (a TOML file, a ``module:Class`` target, a JSON config) is invalid."""


class RecordingError(BussdccError, ValueError):
    """A recording cannot be read: missing, not an MCAP file, or the ``mcap`` package is not installed."""


class ControlError(BussdccError):
    """A control request could not be made or was refused (no runtime, wrong secret, unknown worker)."""

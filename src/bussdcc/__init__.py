"""bussdcc: a strongly-typed, multiprocess coordination kernel for durable event-driven systems.

Every Service and Device runs in its own worker process; the parent Runtime
keeps the authoritative dispatch and runs Processes and Interfaces.
"""

from . import errors, message
from ._version import __version__
from .errors import BussdccError
from .kernel import (
    ClockProtocol,
    Context,
    Device,
    DeviceHandle,
    Event,
    EventBus,
    Interface,
    ManualClock,
    Message,
    Process,
    Service,
    Severity,
    StateStore,
    Subscription,
    SystemClock,
)
from .supervisor import (
    Runtime,
    RuntimeStats,
    SignalRuntime,
    ThreadedRuntime,
    WorkerState,
    WorkerStatus,
)

__all__ = [
    "BussdccError",
    "ClockProtocol",
    "Context",
    "Device",
    "DeviceHandle",
    "Event",
    "EventBus",
    "Interface",
    "ManualClock",
    "Message",
    "Process",
    "Runtime",
    "RuntimeStats",
    "Service",
    "Severity",
    "SignalRuntime",
    "StateStore",
    "Subscription",
    "SystemClock",
    "ThreadedRuntime",
    "WorkerState",
    "WorkerStatus",
    "__version__",
    "errors",
    "message",
]

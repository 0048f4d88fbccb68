"""bussdcc: a strongly-typed, multiprocess coordination kernel for durable event-driven systems.

Every Service and Device runs in its own worker process; the parent Runtime
keeps the authoritative dispatch and runs Processes and Interfaces.

The public surface is three modules, and each public name is exported by exactly one:

* ``bussdcc``: what a system is built from: the components, the runtimes, events,
  the ``Message`` base and ``Severity``, state, clocks, supervision settings
  (``Strategy``, ``RestartPolicy``), recording (``Recording``) and status types (``ReloadPlan`` too);
* ``bussdcc.message``: the messages the runtime itself emits;
* ``bussdcc.errors``: every exception (``BussdccError`` is the base of all).

Everything else (``bussdcc.kernel``, ``bussdcc.supervisor``, ``bussdcc.worker``,
``bussdcc.cli``) is private.
"""

from . import errors, message
from ._version import __version__
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
    RestartPolicy,
    Service,
    Severity,
    StateStore,
    Strategy,
    Subscription,
    SystemClock,
)
from .kernel._builtin import ReloadPlan
from .kernel._recording import Recording
from .supervisor import (
    ReplayReport,
    Runtime,
    RuntimeStats,
    SignalRuntime,
    ThreadedRuntime,
    WorkerState,
    WorkerStatus,
)

__all__ = [
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
    "Recording",
    "ReloadPlan",
    "ReplayReport",
    "RestartPolicy",
    "Runtime",
    "RuntimeStats",
    "Service",
    "Severity",
    "SignalRuntime",
    "StateStore",
    "Strategy",
    "Subscription",
    "SystemClock",
    "ThreadedRuntime",
    "WorkerState",
    "WorkerStatus",
    "__version__",
    "errors",
    "message",
]

"""The typed contracts both sides of the process boundary share."""

from ._boundary import ACTIVITIES, SlotTable, WorkerSpec
from ._bus import EventBus, Subscription
from ._calls import CallPort, DeviceHandle, callable_methods
from ._clock import ClockProtocol, ManualClock, SystemClock
from ._components import (
    Context,
    Device,
    Interface,
    Process,
    RestartPolicy,
    Service,
    Strategy,
    Supervised,
    handles_events,
    restart_policy,
    tick_deadline,
)
from ._context import RuntimeView
from ._event import RUNTIME_SOURCE, Event
from ._message import Message, Severity, message_class, message_names
from ._state import StateStore

__all__ = [
    "ACTIVITIES",
    "RUNTIME_SOURCE",
    "CallPort",
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
    "RestartPolicy",
    "RuntimeView",
    "Service",
    "Severity",
    "SlotTable",
    "StateStore",
    "Strategy",
    "Subscription",
    "Supervised",
    "SystemClock",
    "WorkerSpec",
    "callable_methods",
    "handles_events",
    "message_class",
    "message_names",
    "restart_policy",
    "tick_deadline",
]

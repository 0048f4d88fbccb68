"""The typed contracts both sides of the process boundary share (private: import from ``bussdcc``).

``__all__`` lists the contract types the package re-exports, so the layers can
import them from here; internals (the slot table, the worker's spec, the wire)
are imported from their own private modules.
"""

from ._bus import EventBus, Subscription
from ._calls import DeviceHandle
from ._clock import ClockProtocol, ManualClock, SystemClock
from ._components import Context, Device, Interface, Process, RestartPolicy, Service, Strategy
from ._event import Event
from ._message import Message, Severity
from ._state import StateStore

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
    "RestartPolicy",
    "Service",
    "Severity",
    "StateStore",
    "Strategy",
    "Subscription",
    "SystemClock",
]

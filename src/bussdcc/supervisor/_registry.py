"""Which components a runtime has, by role, and the checks a name or setting must pass.

Runs on whichever thread registers: the caller's before boot; after boot, the
thread of a management request (the runtime serialises those).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import RegistrationError, UnknownWorker
from ..kernel import Device, Interface, Process, Service, Strategy
from ._specs import check_group, check_supervised


def check_name(name: object, what: str, taken: dict[str, Any]) -> str:
    """``name``, unless it is not a non-empty string or is taken (:class:`RegistrationError`)."""
    if not isinstance(name, str) or not name:
        raise RegistrationError(f"a {what} needs a non-empty string name, not {name!r}")
    if not name.isprintable():  # a NUL, newline or other control or format character
        # Names become status table rows, file names and metric labels: each must stay one clean line.
        raise RegistrationError(f"a {what} name must have no control characters, not {name!r}")
    if name in taken:
        raise RegistrationError(f"a {what} named {name!r} is registered already")
    return name


class Registry:
    """The registered components by role, in registration order (boot order)."""

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.services: dict[str, Service] = {}
        self.processes: dict[str, Process] = {}
        self.interfaces: dict[str, Interface] = {}
        self.groups: dict[str, tuple[Strategy, list[str]]] = {}

    def workers(self) -> dict[str, Service | Device]:
        """Every Service and Device by name (one namespace)."""
        return {**self.devices, **self.services}

    def receivers(self) -> list[tuple[str, Process]]:
        """Processes then Interfaces, in the order they start."""
        return [*self.processes.items(), *self.interfaces.items()]

    def find(self, name: str) -> Service | Device:
        """The Service or Device named ``name`` (:class:`UnknownWorker` if none)."""
        found = self.devices.get(name) or self.services.get(name)
        if found is None:
            raise UnknownWorker(name, tuple(sorted(self.workers())))
        return found

    def check_worker(self, component: Service | Device, what: str, taken: dict[str, Any]) -> None:
        """Refuse a bad name or setting of a Service or Device (checks only: it changes nothing)."""
        check_name(component.name, what, taken)
        check_supervised(component)
        if isinstance(component, Device):
            level = component.concurrency
            if not isinstance(level, int) or isinstance(level, bool) or level < 1:
                raise RegistrationError(f"{component.name!r}: concurrency must be an int >= 1, not {level!r}")
        elif (
            not isinstance(component.interval, int | float)
            or not math.isfinite(component.interval)
            or component.interval < 0
        ):
            raise RegistrationError(f"{component.name!r}: interval must be a number >= 0")

    def check_group(self, name: str, members: Sequence[Service | Device], strategy: object) -> None:
        """Refuse a group whose name is taken, or any of whose members could not be registered."""
        check_group(name, members, strategy)
        if name in self.groups:
            raise RegistrationError(f"a group named {name!r} is registered already")
        # Every member is checked before any is registered: a refused group registers nothing.
        taken = dict(self.workers())
        for member in members:
            self.check_worker(member, "group member", taken)
            taken[member.name] = member

    def put(self, component: Service | Device) -> None:
        """Record a checked Service or Device."""
        if isinstance(component, Device):
            self.devices[component.name] = component
        else:
            self.services[component.name] = component

    def drop(self, component: Service | Device) -> None:
        """Forget ``component`` (only that object: a name taken since by another stays)."""
        table: dict[str, Any] = self.devices if isinstance(component, Device) else self.services
        if table.get(component.name) is component:
            del table[component.name]

    def put_receiver(self, component: Process, what: str) -> None:
        """Record a Process or an Interface, unless its name is taken among them."""
        check_name(component.name, what, {**self.processes, **self.interfaces})
        if isinstance(component, Interface):
            self.interfaces[component.name] = component
        else:
            self.processes[component.name] = component

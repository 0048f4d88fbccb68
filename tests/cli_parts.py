"""Components the command-line tests run, importable by path (``tests.cli_parts:...``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bussdcc import Context, Device, Message, Runtime, Service, Severity, ThreadedRuntime


@dataclass(slots=True, frozen=True)
class Beep(Message):
    """A numbered beep, with the pid that made it."""

    name = "test.beep"
    n: int
    pid: int


@dataclass(slots=True, frozen=True)
class Alarm(Message):
    """A warning-level message, for severity filters."""

    name = "test.alarm"
    severity = Severity.WARNING
    text: str


class Beeper(Service):
    """Beeps every ``interval`` seconds from its own process."""

    name = "beeper"
    interval = 0.05

    def __init__(self, every: float = 0.05) -> None:
        self.interval = every
        self.n = 0

    def tick(self, ctx: Context) -> None:
        self.n += 1
        ctx.emit(Beep(n=self.n, pid=os.getpid()))


class Probe(Device):
    """A device that does nothing but exist in its own process."""

    kind = "probe"

    def __init__(self, *, id: str, config: Any = None) -> None:
        super().__init__(id=id, config=config)


def make_runtime() -> Runtime:
    """A small system, for ``bussdcc run tests.cli_parts:make_runtime``."""
    rt = ThreadedRuntime(name="made")
    rt.attach_device(Probe(id="probe"))
    rt.register_service(Beeper(every=0.5))
    return rt

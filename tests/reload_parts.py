"""Components the reload tests declare in system files (``tests.reload_parts:...``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bussdcc import Context, Device, Interface, Message, Process, Service


@dataclass(slots=True, frozen=True)
class Hello(Message):
    """A component started, with what it was configured with, and its pid."""

    name = "test.hello"
    who: str
    label: str
    pid: int


class Knob(Device):
    """A device whose config a caller can read back from its own process."""

    kind = "knob"

    def settings(self) -> dict[str, Any]:
        return {"config": self.config, "pid": os.getpid()}


class Greeter(Service):
    """A service that says hello, with its label, as it starts in its own process."""

    def __init__(self, label: str = "") -> None:
        self.label = label

    def start(self, ctx: Context) -> None:
        ctx.emit(Hello(who=self.name, label=self.label, pid=os.getpid()))


class Note(Process):
    """A Process that says hello, with its label, as it starts (in the parent)."""

    def __init__(self, label: str = "") -> None:
        self.label = label

    def start(self, ctx: Context) -> None:
        ctx.emit(Hello(who=self.name, label=self.label, pid=os.getpid()))


class Face(Interface):
    """An Interface that says hello as it starts."""

    def __init__(self, label: str = "") -> None:
        self.label = label

    def start(self, ctx: Context) -> None:
        ctx.emit(Hello(who=self.name, label=self.label, pid=os.getpid()))


class Grumpy(Service):
    """A service that refuses to start when told to."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    def start(self, ctx: Context) -> None:
        if self.refuse:
            raise RuntimeError("not today")

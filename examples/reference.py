"""Small classes for examples/reference.toml: every key of a system file, in use.

Run it with ``bussdcc run examples/reference.toml``; then ``bussdcc scale crawler 4``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

from bussdcc import Context, Device, Event, Message, Process, Service


@dataclass(slots=True, frozen=True)
class Reading(Message):
    """A value read from a sensor."""

    name = "reference.reading"
    sensor: str
    value: float


@dataclass(slots=True, frozen=True)
class Hello(Message):
    """Where a worker runs: its name, pid, user id, working directory and one variable of its environment."""

    name = "reference.hello"
    worker: str
    pid: int
    uid: int
    cwd: str
    greeting: str


class Bus(Device):
    """A field bus the sensors sit on (it only exists in its own process)."""

    kind = "bus"

    def connect(self) -> None:
        print(f"{self.id}: bus up at {self.config.get('speed', 9600)} baud", flush=True)


class Sensor(Device):
    """Reads a value on request (``bussdcc call sensor-1 read``)."""

    kind = "sensor"

    def __init__(self, *, id: str, config: Any = None) -> None:
        super().__init__(id=id, config=config)
        self.offset = float((config or {}).get("offset", 0.0))

    def read(self) -> float:
        """A reading."""
        return round(20.0 + self.offset + random.uniform(-0.5, 0.5), 2)


class Poller(Service):
    """Says where it runs at start, then ticks every ``interval`` seconds."""

    interval = 2.0

    def __init__(self, sensor: str = "sensor-1") -> None:
        self.sensor = sensor

    def start(self, ctx: Context) -> None:
        greeting = os.environ.get("GREETING", "")
        ctx.emit(Hello(self.name, os.getpid(), os.getuid(), os.getcwd(), greeting))

    def tick(self, ctx: Context) -> None:
        ctx.emit(Reading(self.sensor, round(20.0 + random.uniform(-1, 1), 2)))


class Printer(Process):
    """Prints readings and greetings (in the runtime's process)."""

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Reading | Hello):
            print(evt.payload, flush=True)

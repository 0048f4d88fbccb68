"""The components of ``plant.toml``: a flaky sensor, a controller and a logger.

Run with ``bussdcc run examples/plant.toml`` (or ``make demo``), then, from
another shell: ``bussdcc status``, ``bussdcc restart controller``,
``bussdcc events -f``.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass
from typing import Any

from bussdcc import Context, Device, Event, Message, Process, Service, Severity


@dataclass(slots=True, frozen=True)
class Reading(Message):
    """One temperature sample."""

    name = "plant.reading"
    sensor: str
    value: float


@dataclass(slots=True, frozen=True)
class Setpoint(Message):
    """The heater power the controller chose."""

    name = "plant.setpoint"
    power: float


@dataclass(slots=True, frozen=True)
class TooHot(Message):
    """The plant is over its limit."""

    name = "plant.too_hot"
    severity = Severity.WARNING
    value: float


class FlakySensor(Device):
    """A sensor whose driver samples on its own thread and, now and then, takes its process down."""

    kind = "thermometer"

    def __init__(self, *, id: str, config: Any = None) -> None:
        super().__init__(id=id, config=config)
        cfg = config if isinstance(config, dict) else {}
        self.period = float(cfg.get("period", 0.5))
        self.crash_chance = float(cfg.get("crash_chance", 0.0))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def connect(self) -> None:
        """Start sampling."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="sampler", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        value = 20.0
        while not self._stop.wait(self.period):
            if random.random() < self.crash_chance:
                print(f"sensor {self.id}: driver crashed", flush=True)
                os._exit(70)  # what a vendor library does on a bad day
            value += random.uniform(-1.0, 1.5)
            if self.ctx is not None:
                self.ctx.emit(Reading(sensor=self.id, value=round(value, 2)))


class Controller(Service):
    """Turns readings into heater power, in its own process."""

    interval = 5.0

    def __init__(self, target: float = 22.0) -> None:
        self.target = target
        self.last: float | None = None

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        """Answer each reading with a setpoint."""
        if isinstance(evt.payload, Reading):
            self.last = evt.payload.value
            power = max(0.0, min(100.0, (self.target - evt.payload.value) * 20.0))
            ctx.emit(Setpoint(power=round(power, 1)))
            if evt.payload.value > self.target + 5:
                ctx.emit(TooHot(value=evt.payload.value))


class Logger(Process):
    """Prints what happens, in the parent."""

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        """One line per lifecycle message and warning."""
        payload = evt.payload
        if payload.severity >= Severity.WARNING or payload.name.startswith(("worker.", "device.", "service.")):
            print(f"[{self.name}] {payload.name} {payload.to_dict()}", flush=True)

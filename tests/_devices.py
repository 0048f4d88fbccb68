"""Devices the call tests command, and the components that call them from other processes."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from dataclasses import dataclass

from bussdcc import Context, Device, DeviceHandle, Event, Message, Service

from ._helpers import Ping


@dataclass(slots=True, frozen=True)
class Target:
    """A structured argument."""

    x: float
    y: float
    label: str = ""


@dataclass(slots=True, frozen=True)
class Reading:
    """A structured result."""

    channel: int
    value: float
    pid: int


@dataclass(slots=True, frozen=True)
class Answer(Message):
    """What a component that called a device got back."""

    name = "test.answer"
    who: str
    value: str


class Motor(Device):
    """A device whose methods return typed results, raise, sleep, crash, and keep records."""

    kind = "motor"

    def connect(self) -> None:
        self.served: list[tuple[int, int]] = []
        self.active = 0
        self.most_active = 0
        self.guard = threading.Lock()

    def move(self, position: float, speed: float = 1.0) -> float:
        return position * speed

    def aim(self, target: Target, *, scale: float = 1.0) -> Target:
        return Target(target.x * scale, target.y * scale, target.label.upper())

    def read(self, channel: int) -> Reading:
        return Reading(channel, channel / 10, os.getpid())

    def echo(self, ping: Ping) -> Ping:
        return Ping(n=ping.n + 1)

    def pid(self) -> int:
        return os.getpid()

    def fail(self, why: str) -> None:
        raise ValueError(why)

    def nap(self, seconds: float, tag: str = "") -> str:
        if tag.startswith("announce:") and self.ctx is not None:
            self.ctx.emit(Answer(who="nap", value=tag))  # the call is running now
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(seconds)
        with self.guard:
            self.active -= 1
        return tag

    def span(self, seconds: float) -> tuple[float, float]:
        start = time.time()
        time.sleep(seconds)
        return start, time.time()

    def record(self, caller: int, i: int) -> int:
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.served.append((caller, i))
        with self.guard:
            self.active -= 1
        return len(self.served)

    def history(self) -> list[tuple[int, int]]:
        return self.served

    def peak(self) -> int:
        return self.most_active

    def count(self) -> int:
        return len(self.served)

    def segfault(self) -> None:
        ctypes.string_at(0)

    def unencodable(self) -> object:
        return object()

    def twin(self) -> Motor:
        return self  # not something msgspec can encode, nor decode into

    def huge(self, size: int) -> bytes:
        return b"x" * size

    def _secret(self) -> None:
        """Private: never callable."""


class PooledMotor(Motor):
    """The same device, running up to four calls at once."""

    concurrency = 4


class Relay(Device):
    """Another kind of device: switches a relay, and asks a motor where it is."""

    kind = "relay"

    def switch(self, on: bool) -> bool:
        return on

    def ask_motor(self, position: float) -> float:
        assert self.ctx is not None
        return self.ctx.device(Motor, "axis-1").call(Motor.move, position, speed=3.0)


class Operator(Service):
    """Calls the motor from its own process on each Ping and reports what it got."""

    name = "operator"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if not isinstance(evt.payload, Ping):
            return
        motor = ctx.device(Motor, "axis-1")
        reached = motor.call(Motor.move, float(evt.payload.n), speed=2.0)
        reading = motor.call(Motor.read, 7)
        try:
            motor.call(Motor.fail, "from a service")
            failed = "no error"
        except Exception as exc:
            failed = type(exc).__name__
        ctx.emit(Answer(who="operator", value=f"{reached}|{reading.channel}|{reading.pid}|{failed}|{os.getpid()}"))
        # The same from asyncio inside the worker, several at once.
        moved = asyncio.run(self.moves(motor, evt.payload.n))
        ctx.emit(Answer(who="operator-async", value=",".join(str(x) for x in moved)))

    async def moves(self, motor: DeviceHandle[Motor], n: int) -> list[float]:
        return list(await asyncio.gather(*(motor.acall(Motor.move, float(n + i)) for i in range(4))))


class Recorders(Service):
    """Makes numbered calls to the motor from its own process when a Ping comes, then says so."""

    interval = 3600.0

    def __init__(self, name: str, caller: int, count: int) -> None:
        self.name = name
        self.caller = caller
        self.count = count

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            motor = ctx.device(Motor, "axis-1")
            served = [motor.call(Motor.record, self.caller, i) for i in range(self.count)]
            ctx.emit(Answer(who=self.name, value=str(served == sorted(served))))

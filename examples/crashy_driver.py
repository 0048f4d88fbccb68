"""A crash-prone driver and service, supervised: watch them die and come back as new processes.

Run with ``make demo`` or ``python examples/crashy_driver.py [seconds]``.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass

from bussdcc import Context, Device, Event, Message, Process, Runtime, Service, Severity


@dataclass(slots=True, frozen=True)
class Reading(Message):
    """One sample from the sensor."""

    name = "demo.reading"
    value: float


@dataclass(slots=True, frozen=True)
class Setpoint(Message):
    """What the controller decided."""

    name = "demo.setpoint"
    value: float


def crash(how: str) -> None:
    """Die the way real drivers do."""
    print(f"  [pid {os.getpid()}] about to die by {how}", flush=True)
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "os._exit":
        os._exit(42)
    elif how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("driver bug")


class FlakySensor(Device):
    """A sensor whose vendor library sometimes refuses to connect and sometimes takes the process down."""

    kind = "sensor"
    max_restarts = 50

    def connect(self) -> None:
        if random.random() < 0.2:
            raise OSError("sensor did not answer on /dev/ttyUSB0")
        threading.Thread(target=self._read_loop, daemon=True).start()

    def _read_loop(self) -> None:
        while self.ctx is not None:
            self.ctx.emit(Reading(value=round(random.gauss(20.0, 2.0), 2)))
            if random.random() < 0.04:
                crash(random.choice(["segfault", "os._exit", "SIGKILL"]))
            time.sleep(0.1)


class Controller(Service):
    """Turns readings into setpoints; raises now and then, and sometimes its process dies."""

    name = "controller"
    interval = 0.25
    max_restarts = 50

    def start(self, ctx: Context) -> None:
        self.readings: list[float] = []

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Reading):
            self.readings = [*self.readings[-9:], evt.payload.value]

    def tick(self, ctx: Context) -> None:
        roll = random.random()
        if roll < 0.08:
            raise ValueError("controller hit a bad sample")  # service.error, keeps running
        if roll < 0.12:
            crash(random.choice(["segfault", "os._exit"]))
        if self.readings:
            ctx.emit(Setpoint(value=round(sum(self.readings) / len(self.readings), 2)))
            ctx.state.set("plant.setpoint", self.readings[-1])


class Console(Process):
    """Prints what matters: lifecycle and supervision messages, not every reading."""

    name = "console"

    def __init__(self) -> None:
        self.readings = 0
        self.setpoints = 0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        msg = evt.payload
        if isinstance(msg, Reading):
            self.readings += 1
            return
        if isinstance(msg, Setpoint):
            self.setpoints += 1
            return
        fields = {k: v for k, v in msg.to_dict().items() if k not in {"traceback", "evt"} and v is not None}
        mark = "!!" if msg.severity >= Severity.ERROR else "  "
        print(f"{evt.time:%H:%M:%S.%f}"[:-3], mark, f"{msg.name:<22}", f"[{evt.source}]", fields, flush=True)


def main(seconds: float) -> int:
    console = Console()
    rt = Runtime(name="crashy")
    rt.attach_device(FlakySensor(id="sensor-1"))
    rt.register_process(console)
    rt.register_service(Controller())
    print(f"parent pid {os.getpid()}; running for {seconds:.0f}s", flush=True)
    with rt:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            status = "  ".join(f"{w.name}: {w.state.value} pid={w.pid} restarts={w.restarts}" for w in rt.workers())
            print(
                f"---- {status} | readings={console.readings} setpoints={console.setpoints}"
                f" setpoint={rt.state.get('plant.setpoint')}",
                flush=True,
            )
    stats = rt.stats()
    print(f"shut down cleanly: {stats.dispatched} messages dispatched, {stats.lost} lost in crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))

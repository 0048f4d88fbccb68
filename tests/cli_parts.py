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

    def read(self, channel: int, scale: float = 1.0) -> dict[str, float]:
        """A reading, taken in the device's own process."""
        return {"channel": channel, "value": channel * scale, "pid": os.getpid()}

    def jam(self) -> None:
        """A command the hardware refuses."""
        raise ValueError("the probe is jammed")


def make_runtime() -> Runtime:
    """A small system, for ``bussdcc run tests.cli_parts:make_runtime``."""
    rt = ThreadedRuntime(name="made")
    rt.attach_device(Probe(id="probe"))
    rt.register_service(Beeper(every=0.5))
    return rt


class Chatty(Service):
    """Prints and logs once it starts, then (``crash``) dies at once without a goodbye."""

    name = "chatty"
    interval = 3600.0

    def __init__(self, lines: int = 3, crash: bool = False) -> None:
        self.lines = lines
        self.crash = crash

    def start(self, ctx: Context) -> None:
        import logging
        import sys

        for i in range(self.lines):
            print(f"out {i}")
        print("to stderr", file=sys.stderr)
        log = logging.getLogger("tests.chatty")
        log.warning("careful: %s", "hot")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
        if self.crash:
            sys.stdout.write("last words")  # no newline, no flush: still not lost
            sys.stdout.flush()
            os._exit(9)


class Broken(Service):
    """A Service whose start always raises."""

    name = "broken"

    def start(self, ctx: Context) -> None:
        raise RuntimeError("no hardware here")

"""A worker's own ``health()``: called on a thread of its own, each result sent to the parent.

The thread never holds up the worker: a ``health()`` that hangs keeps only this thread,
and the parent, which expects a result every ``health_interval`` (+ ``health_timeout``),
counts the silence as failing. The thread is a daemon and is not waited for at exit.
"""

from __future__ import annotations

import threading
import time

from ..kernel import Device, Service
from ..kernel import protocol as p
from ..kernel._components import has_health
from ..kernel._text import safe_text
from ._channel import Channel

#: The longest single wait for the next check (a longer interval is waited out in slices).
_LONGEST_WAIT = 3600.0


def _describe(value: object) -> str:
    """``repr(value)``, or its type's name if its ``repr`` raises: describing a failure must not fail."""
    try:
        return safe_text(repr(value))
    except Exception:
        return f"<{type(value).__name__} whose repr raised>"


def outcome(component: Service | Device) -> p.Health:
    """Call ``component.health()`` once: its result as a frame (raising, or anything but True, fails)."""
    try:
        result = component.health()
    except BaseException as exc:  # SystemExit too: it is this thread's, and says nothing healthy
        return p.Health(False, f"health() raised {_describe(exc)}")
    if result is True:
        return p.Health(True)
    if result is False:
        return p.Health(False, "health() returned False")
    if isinstance(result, str):
        return p.Health(False, result or "health() returned an empty reason")
    return p.Health(False, f"health() returned {_describe(result)}, not True, False or a reason (a string)")


class HealthCheck:
    """Runs ``health()`` every ``health_interval`` seconds while the worker serves (only if its class defines it)."""

    def __init__(self, component: Service | Device, channel: Channel) -> None:
        self._component = component
        self._channel = channel
        self._stop = threading.Event()

    def start(self) -> None:
        """Start the thread (after Ready: the parent counts from there)."""
        if has_health(self._component):
            threading.Thread(target=self._run, name="bussdcc-health", daemon=True).start()

    def _run(self) -> None:
        interval = self._component.health_interval
        while not self._wait(interval):
            frame = outcome(self._component)
            if self._stop.is_set():
                return
            try:
                self._channel.post_control(frame)
                # Sent now if the main thread is off in user code; else it sends it when it looks up.
                self._channel.try_pump(0)
            except Exception:
                return  # the channel is closing: the worker is on its way out

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopped (True). In slices: a wait past ~9.2e9 s overflows time_t."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(left, _LONGEST_WAIT)):
                return True
        return self._stop.is_set()

    def stop(self) -> None:
        """No more calls, nor results (a call under way is not waited for)."""
        self._stop.set()

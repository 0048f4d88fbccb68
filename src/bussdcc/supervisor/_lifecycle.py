"""The runtime's own lifecycle: one phase, under one lock, and who may act on the runtime when.

Any thread: the one that boots, the one that shuts down, handlers asking for a
halt, management requests. The lock guards only the fields below and is never
held while waiting on the hub or on dispatch (``hold`` marks the runtime as held
and releases the lock; waiters wait on its condition).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import RuntimeStateError


class Phase(enum.Enum):
    """Where a runtime is in its life."""

    #: Nothing exists: before boot, after shutdown, after a failed boot.
    DOWN = "down"
    #: The boot sequence is under way (infrastructure, then devices, receivers, services).
    BOOTING = "booting"
    #: Boot has completed; shutdown has not begun.
    UP = "up"
    #: Shutdown is under way.
    STOPPING = "stopping"


class Lifecycle:
    """The phase, a halt asked for while booting, and the hold that serialises transitions."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.phase = Phase.DOWN
        #: Whether boot has said ``runtime.booted`` (before its services start) and shutdown has not begun.
        self.announced = False
        self._held = False
        #: A halt asked for while booting: boot carries it out at its next step.
        self.pending: str | None = None
        self.requested = False
        #: Set once the runtime is down after having been up.
        self.down = threading.Event()

    def move(self, phase: Phase) -> None:
        """Enter ``phase``; those waiting for the hold look again."""
        with self._cond:
            self.phase = phase
            if phase is not Phase.UP and phase is not Phase.BOOTING:
                self.announced = False
            self._cond.notify_all()

    @contextmanager
    def hold(self, *, live: bool) -> Iterator[None]:
        """Hold the runtime against other transitions; with ``live``, only while booting or up.

        A management request (``live``) gives up once shutdown begins, which may hold the
        runtime while it waits for that very request's worker to stop.
        """
        with self._cond:
            while self._held:
                if live:
                    self._check_live()
                self._cond.wait()
            if live:
                self._check_live()
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def _check_live(self) -> None:
        if self.phase is Phase.STOPPING:
            raise RuntimeStateError("the runtime is shutting down")
        if self.phase is Phase.DOWN:
            raise RuntimeStateError("the runtime is not up")

    def check_live(self) -> None:
        """Raise :class:`RuntimeStateError` unless booting or up."""
        with self._cond:
            self._check_live()

    def defer_halt(self, reason: str, requested: bool) -> bool:
        """While booting, leave the halt to boot and return True; else return False."""
        with self._cond:
            if self.phase is not Phase.BOOTING:
                return False
            # A failure already pending is not hidden by a request.
            if self.pending is None or not requested:
                self.pending = reason
                self.requested = requested
            return True

    def end_boot(self) -> str | None:
        """Boot has started everything: up, unless a halt was asked for meanwhile (returned)."""
        with self._cond:
            if self.pending is None:
                self.phase = Phase.UP
            self._cond.notify_all()
            return self.pending

    def begin_boot(self) -> None:
        """Enter BOOTING from DOWN, with no halt pending."""
        with self._cond:
            self.phase = Phase.BOOTING
            self.pending = None
            self.requested = False
            self.down.clear()

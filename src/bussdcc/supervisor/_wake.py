"""A self-pipe that wakes a thread blocked in a poll, from any thread, safely to the end."""

from __future__ import annotations

import os
import threading


class WakePipe:
    """The read end goes into a poller; :meth:`wake` may be called from any thread, even after :meth:`close`."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Closed under this lock, so a late wake-up never writes to a descriptor reused meanwhile.
        # Reentrant: a signal handler that wakes the hub may interrupt this very thread mid-wake.
        self._lock = threading.RLock()
        self._closed = False

    def wake(self) -> None:
        """Make the poller return (a no-op once closed)."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._w, b"\0")
            except OSError:
                pass  # full of wake-ups already

    def drain(self) -> None:
        """Take the pending wake-ups (the polling thread)."""
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close both ends (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)
                os.close(self._w)

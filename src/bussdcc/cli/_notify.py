"""systemd's notify protocol (``Type=notify``): READY=1, STOPPING=1 and WATCHDOG=1 on ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket
import threading


def notify(state: str) -> bool:
    """Send ``state`` to ``$NOTIFY_SOCKET``; False if there is none (not run by systemd) or it failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), addr)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if systemd asked this process for keep-alives."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.01, int(usec) / 2e6)
    except ValueError:
        return None


class Watchdog:
    """Sends WATCHDOG=1 every half watchdog period while the runtime is up."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="bussdcc-watchdog", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _main(self) -> None:
        while not self._stop.wait(self.interval):
            notify("WATCHDOG=1")

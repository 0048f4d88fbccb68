"""A worker's signal dispositions: what is sent to its whole process group is its parent's business.

systemd (``KillMode=control-group``), shells and ``timeout`` signal every process
of a unit or group at once. The parent turns SIGTERM into a graceful stop of every
worker, and SIGHUP/SIGUSR1/SIGUSR2 into messages; a worker that died of them
first would skip its ``stop``/``disconnect``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Protocol


class _Stoppable(Protocol):
    def stop_later(self, delay: float) -> None: ...


class DeferredTerm:
    """The SIGTERM handler until the parent's Stop arrives: stop by itself unless Stop comes first.

    A SIGTERM sent to the whole group reaches the parent too, which stops this
    worker in order; a lone ``kill -TERM`` still ends it, gracefully, ``delay``
    seconds later.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._channel: _Stoppable | None = None
        self._pending = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread between two bytecodes: take no lock.
        if self._channel is None:
            self._pending = True
        else:
            self._channel.stop_later(self.delay)

    def attach(self, channel: _Stoppable) -> None:
        """Route SIGTERM to ``channel`` (one noted before it existed is not lost)."""
        self._channel = channel
        if self._pending:
            channel.stop_later(self.delay)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Caught rather than ignored: a program the worker execs gets the default action back."""


def take_signals(stop_timeout: float) -> DeferredTerm:
    """Install the worker's dispositions (main thread); return the SIGTERM handler."""
    # The terminal's Ctrl-C goes to the parent, which stops workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    term = DeferredTerm(stop_timeout)
    signal.signal(signal.SIGTERM, term)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, _ignore)
    return term


def stop_arrived() -> None:
    """The worker is handling Stop: from now on SIGTERM is the parent's escalation, which must kill.

    The default action kills even a worker stuck in native code, where no Python
    handler would ever run. A handler the component installed itself is left alone.
    """
    if threading.current_thread() is threading.main_thread() and isinstance(
        signal.getsignal(signal.SIGTERM), DeferredTerm
    ):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

"""Runtime variants: a background thread for embedding, and POSIX signal supervision."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from ..errors import RuntimeStateError
from ..kernel import Message
from ..kernel import _builtin as m
from ._runtime import Runtime


class ThreadedRuntime(Runtime):
    """A Runtime that can run in a background thread of a host application.

    ``run()`` blocks until shutdown; ``start()`` runs it in a thread and returns
    once booted; ``shutdown()`` (or ``stop()``) ends it from any thread.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._thread: threading.Thread | None = None
        self._boot_error: BaseException | None = None
        self._boot_done = threading.Event()

    def start(self, timeout: float | None = None) -> None:
        """Boot and run in a background thread; return once booted (re-raises a boot error)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._boot_done.clear()
        self._boot_error = None
        self._boot_waiter = threading.current_thread()  # it only waits for the boot below
        self._thread = threading.Thread(target=self._thread_main, name="bussdcc-runtime", daemon=True)
        self._thread.start()
        if not self._boot_done.wait(timeout):
            raise RuntimeStateError("the runtime did not boot in time")
        if self._boot_error is not None:
            raise self._boot_error

    def _thread_main(self) -> None:
        try:
            self.boot()
        except BaseException as exc:
            self._boot_error = exc
            return
        finally:
            self._boot_done.set()
        self.wait()

    def stop(self, reason: str | None = None, timeout: float | None = None) -> None:
        """Shut down and join the background thread (from a handler: start the shutdown, don't wait)."""
        in_handler = self._in_handler()
        self.shutdown(reason)
        if not in_handler and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class SignalRuntime(ThreadedRuntime):
    """A ThreadedRuntime driven by POSIX signals while booted.

    SIGINT and SIGTERM shut down; SIGHUP emits ``system.reload`` (after re-reading and
    applying the system file, if the runtime has one: see :meth:`Runtime.reload`); SIGUSR1 and
    SIGUSR2 emit ``system.signal`` with action ``user1`` / ``user2``. Boot it
    from the main thread (only that thread may install signal handlers).
    """

    SIGNAL_ACTIONS: dict[int, str] = {
        int(signal.SIGINT): "shutdown",
        int(signal.SIGTERM): "shutdown",
        int(signal.SIGHUP): "reload",
        int(signal.SIGUSR1): "user1",
        int(signal.SIGUSR2): "user2",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._previous: dict[int, Any] = {}

    def boot(self) -> None:
        """Boot, then route the signals to the runtime."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeStateError("SignalRuntime must boot in the main thread")
        super().boot()
        for signum in self.SIGNAL_ACTIONS:
            self._previous.setdefault(signum, signal.signal(signum, self._on_signal))

    def start(self, timeout: float | None = None) -> None:
        """Not available: signal handlers belong to the main thread; use ``run()``."""
        raise RuntimeStateError("SignalRuntime runs in the main thread: call run(), not start()")

    def shutdown(self, reason: str | None = None) -> None:
        """Shut down, then give the signals back to their previous handlers."""
        try:
            super().shutdown(reason)
        finally:
            self._restore_signals()

    def run(self) -> None:
        """Boot, block until shutdown (by signal or otherwise), then restore the signals."""
        try:
            super().run()
        finally:
            self._restore_signals()

    def _restore_signals(self) -> None:
        # Only the main thread may; a shutdown on another thread leaves it to
        # run(), or to the next signal, which finds the runtime down.
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._parts is None:
            self._restore_signals()
            previous = signal.getsignal(signum)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signum)
            return
        # A handler interrupts whatever the main thread was doing (maybe a
        # dispatch): never block here, hand the work to other threads.
        action = self.SIGNAL_ACTIONS.get(signum)
        if action == "shutdown":
            self._halt(signal.strsignal(signum) or f"signal {signum}")
        elif action == "reload":
            parts = self._parts
            if self._reloader is not None and parts is not None:
                # Re-read the system file and apply it (it emits system.reload, with the plan).
                parts.hub.call_soon(self._reload_soon)
            else:
                self._emit_later(m.SystemReload())
        elif action is not None:
            self._emit_later(m.SystemSignal(signal=signum, action=action))

    def _emit_later(self, message: Message) -> None:
        # Only a lock-free hand-off is safe in a signal handler: the hub queues it for dispatch.
        parts = self._parts
        if parts is not None:
            parts.hub.call_soon(lambda: self._emit_queued(message))

"""The entry point of a worker process, called by the fork server right after fork()."""

from __future__ import annotations

import faulthandler
import io
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn

from ..kernel import WorkerSpec
from ..kernel.protocol import Hello
from ._channel import Channel
from ._context import make_context
from ._host import run_component
from ._logs import forward_logging

# When a worker ends without an acknowledged goodbye (an exception, a failed
# start), what it sent last may still be queued in ZeroMQ's I/O thread: give it
# a moment to leave rather than dropping it.
_LINGER_MS = 2000


def _reset_process() -> None:
    # The terminal's Ctrl-C goes to the parent, which stops workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    faulthandler.enable()
    forward_logging()
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def run(spec: WorkerSpec, component: object, on_term: Callable[[], None] | None = None) -> NoReturn:
    """Host ``component`` until it stops, then exit the process (never returns).

    ``on_term``, if given, runs on a thread of its own when SIGTERM arrives (a
    standalone worker asks its runtime for a graceful stop); otherwise SIGTERM kills.
    """
    code = 1
    try:
        _reset_process()
        if on_term is not None:
            signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=on_term, daemon=True).start())
        channel = Channel(spec)
        try:
            channel.send_control(Hello(os.getpid(), spec.token))
            code = run_component(component, make_context(spec, channel), channel)
        finally:
            # After an acknowledged goodbye nothing is left to send.
            channel.close(0 if channel.acknowledged else _LINGER_MS)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

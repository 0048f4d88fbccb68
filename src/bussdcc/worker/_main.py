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

from ..kernel import Device, Service
from ..kernel._boundary import WorkerSpec
from ..kernel.protocol import Hello
from ._channel import Channel
from ._context import make_context
from ._host import run_component, stop_at_gate
from ._logs import forward_logging
from ._signals import DeferredTerm, take_signals
from ._stacks import dump_stacks_on_request

# When a worker ends without an acknowledged goodbye (an exception, a failed
# start), what it sent last may still be queued in ZeroMQ's I/O thread: give it
# a moment to leave rather than dropping it.
_LINGER_MS = 2000


def _reset_process(spec: WorkerSpec, component: object) -> DeferredTerm:
    stop_timeout = getattr(component, "stop_timeout", 5.0)
    term = take_signals(float(stop_timeout) if isinstance(stop_timeout, int | float) else 5.0)
    if not _prepared:  # a worker the fork server did not fork (the command line's)
        prepare()
    dump_stacks_on_request(spec)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:  # the fork server's are already
            stream.reconfigure(line_buffering=True)
    return term


#: Whether :func:`prepare` ran in this process (or in the fork server it was forked from).
_prepared = False


def prepare() -> None:
    """Once, in the fork server before it forks any worker: what every worker would otherwise redo.

    Done once there, it is inherited by each fork instead of being redone in it, where the
    code it runs and the objects it makes would be copied into every worker's memory.
    """
    global _prepared  # noqa: PLW0603 - set once, before any fork
    forward_logging()
    # fd 2, not sys.stderr: a forked worker's fd 2 becomes its own stderr pipe after this, and the
    # handlers, their alternate stack and this fd are all inherited through fork.
    faulthandler.enable(file=2)
    _prepared = True


def run(spec: WorkerSpec, component: object, on_term: Callable[[], None] | None = None) -> NoReturn:
    """Host ``component`` until it stops, then exit the process (never returns).

    ``on_term``, if given, runs on a thread of its own when SIGTERM arrives (a
    standalone worker asks its runtime for a graceful stop). Otherwise SIGTERM
    before the parent's Stop is left to the parent (also signalled, when the whole
    group is), and the worker stops by itself after its ``stop_timeout`` if no Stop
    comes; once Stop has arrived, SIGTERM kills.
    """
    code = 1
    try:
        term = _reset_process(spec, component)
        if on_term is not None:
            signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=on_term, daemon=True).start())
        channel = Channel(spec)
        term.attach(channel)
        try:
            channel.send_control(Hello(os.getpid(), spec.token))
            ctx = make_context(spec, channel)
            # Gated (forked ahead of its turn at boot): no code of the component runs before the parent's Go.
            # A device's call endpoint is no code of its own: it is bound meanwhile, off boot's path.
            if spec.gated and isinstance(component, Device):
                channel.open_direct()
            if spec.gated and isinstance(component, Service | Device) and not channel.await_go():
                code = stop_at_gate(component, channel)
            else:
                code = run_component(component, ctx, channel)
        finally:
            # After an acknowledged goodbye nothing is left to send.
            channel.close(0 if channel.acknowledged else _LINGER_MS)
    except SystemExit as exc:
        # As the interpreter ends on sys.exit(): its code, or its message on stderr and 1; no traceback.
        if isinstance(exc.code, int):
            code = exc.code & 0xFF
        elif exc.code is None:
            code = 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

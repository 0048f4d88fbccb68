"""Forking a threaded host safely: logging quiet around the fork, and naming the threads it copies.

``fork()`` copies only the calling thread: a lock another thread holds at that
moment stays held for ever in the child. The fork at boot holds every logging
handler's lock so no logging thread is mid-write, and the threads alive then are
named, so that a worker hung at start can say what probably holds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Collection
from typing import Any

#: Seconds the fork at boot waits, in all, for logging threads to finish the record they are writing.
_QUIET_WAIT = 2.0
#: Thread names made by the runtime itself: none of them is inside user code at the fork.
_OWN_THREADS = "bussdcc-"


def other_threads(ignore: Collection[threading.Thread] = ()) -> list[str]:
    """The names of the live threads, other than the caller's, the runtime's own and ``ignore``."""
    me = threading.current_thread()
    return [
        t.name for t in threading.enumerate() if t is not me and t not in ignore and not t.name.startswith(_OWN_THREADS)
    ]


def threads_fault(threads: list[str]) -> str:
    """What the threads alive at the fork of the fork server mean, for a ``runtime.fault``."""
    shown = ", ".join(repr(name) for name in threads[:10])
    if len(threads) > 10:
        shown += f" and {len(threads) - 10} more"
    return (
        f"{_count(threads)} running when the fork server was made at boot: {shown}. A lock one of them "
        "held then (a file it was writing, say) stays held for ever in every worker, which then hangs; "
        "logging's handlers were made safe, other locks cannot be. Boot the runtime before starting threads"
    )


def threads_hint(threads: list[str]) -> str:
    """Why a worker forked from a threaded host may hang at start (empty if none was threaded)."""
    if not threads:
        return ""
    return (
        f" ({_count(threads)} running when the fork server was made at boot: a lock they held may be "
        "held for ever in the worker; boot the runtime before starting threads)"
    )


def _count(threads: list[str]) -> str:
    return "1 other thread was" if len(threads) == 1 else f"{len(threads)} other threads were"


def _handlers() -> list[logging.Handler]:
    """Every live logging handler, in the order they were made (the order their locks are taken in)."""
    refs: list[Any] = list(getattr(logging, "_handlerList", ()))
    handlers = [ref() for ref in refs]
    return [h for h in handlers if isinstance(h, logging.Handler)]


@contextlib.contextmanager
def logging_quiet() -> Any:
    """Hold logging's lock and every handler's lock, their streams flushed, for a fork.

    A thread caught inside a handler's write at the fork leaves the file's
    buffer lock held in the child for ever (CPython reinitialises the
    handler's own lock after fork, never the buffer's): with every handler
    lock held, no logging thread is inside a write. Flushing first keeps the
    child from writing the parent's buffered records a second time.
    """
    module_lock: Any = getattr(logging, "_lock", None)
    parent = os.getpid()
    held: list[Any] = []
    deadline = time.monotonic() + _QUIET_WAIT
    # Module lock first, then handlers: the order logging's own configuration
    # takes them in. A handler closing takes them the other way round, so each
    # handler lock is waited for a bounded time, and one not had is passed over.
    if module_lock is not None:
        module_lock.acquire()
    try:
        for handler in _handlers():
            lock: Any = handler.lock
            if lock is None or not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                continue
            held.append(lock)
            try:
                handler.flush()
            except Exception:
                pass  # a closed or broken stream: nothing to flush, and not ours to report
        yield
    finally:
        if os.getpid() != parent:  # pragma: no cover - the child: logging made its locks anew
            held.clear()
            module_lock = None
        for lock in reversed(held):
            lock.release()
        if module_lock is not None:
            module_lock.release()

"""A hung worker's Python stacks, asked for before it is killed (hub thread).

Each worker registers :mod:`faulthandler` for :data:`~bussdcc.kernel._postmortem.STACKS_SIGNAL`
at start (``worker/_stacks.py``), writing to a file of its own in the run directory.
When the watchdog finds it hung, :class:`Stacks` sends it that signal and looks at
the file every :data:`POLL` seconds, without blocking the hub: once the dump has
stopped growing, or after :data:`WAIT` seconds at most, what is there is handed on
and the worker is killed. faulthandler's handler needs no GIL, so a worker stuck in
native code holding it still answers. The file is removed once the worker has ended.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..kernel._postmortem import STACKS_SIGNAL, stacks_path
from ..kernel._text import MAX_TEXT
from ._timers import Timer
from ._workers import Incarnation

#: Seconds between looks at a dump being written, and the longest a kill waits for it.
POLL: Final = 0.02
WAIT: Final = 2.0
#: Bytes of a dump read at most (the message carries at most MAX_TEXT characters of it).
_READ: Final = 4 * MAX_TEXT


def read_stacks(path: str) -> str:
    """What ``path`` holds (bounded), or "" if nothing can be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(_READ)
    except OSError:
        return ""
    return data.decode("utf-8", "replace").rstrip("\n")


class _Grab:
    __slots__ = ("deadline", "done", "path", "size", "timer")

    def __init__(self, path: str, done: Callable[[str], None], deadline: float) -> None:
        self.path = path
        self.done = done
        self.deadline = deadline
        self.size = -1
        self.timer: Timer | None = None


class Stacks:
    """Asks hung workers for their stacks; ``later(delay, fn)`` is the hub's timer."""

    def __init__(self, run_dir: Path | None, later: Callable[[float, Callable[[], None]], Timer]) -> None:
        self.run_dir = run_dir
        self._later = later
        self._grabs: dict[Incarnation, _Grab] = {}  # the grabs under way

    def path(self, inc: Incarnation) -> str | None:
        """Where the process of ``inc`` dumps its stacks (None without a run directory or a pid)."""
        if self.run_dir is None or inc.pid is None:
            return None
        return stacks_path(self.run_dir, inc.pid, inc.number)

    def begin(self, inc: Incarnation, done: Callable[[str], None]) -> bool:
        """Ask ``inc`` for its stacks; ``done(stacks)`` follows on the hub (False: it cannot be asked)."""
        path = self.path(inc)
        if path is None or inc.exited or inc.pid is None or inc in self._grabs:
            return False
        try:
            os.stat(path)  # made by the worker just before it registered the dump
            os.kill(inc.pid, STACKS_SIGNAL)  # the process alone: its helpers have no such handler
        except OSError:
            return False
        grab = _Grab(path, done, time.monotonic() + WAIT)
        self._grabs[inc] = grab
        grab.timer = self._later(POLL, lambda: self._look(inc))
        return True

    def _look(self, inc: Incarnation) -> None:
        grab = self._grabs.get(inc)
        if grab is None:
            return
        try:
            size = os.stat(grab.path).st_size
        except OSError:
            size = 0
        # The handler writes the whole dump at once: it is complete once it has stopped growing.
        if (size > 0 and size == grab.size) or time.monotonic() >= grab.deadline:
            self.finish(inc)
            return
        grab.size = size
        grab.timer = self._later(POLL, lambda: self._look(inc))

    def finish(self, inc: Incarnation) -> None:
        """Hand on what ``inc`` dumped so far, if a grab is under way (its exit is about to be reported)."""
        grab = self._grabs.pop(inc, None)
        if grab is None:
            return
        if grab.timer is not None:
            grab.timer.cancel()
        grab.done(read_stacks(grab.path))

    def forget(self, inc: Incarnation) -> None:
        """``inc`` has ended: remove its dump file."""
        self.finish(inc)
        path = self.path(inc)
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass

"""The fork server: a single-threaded child, made at boot, that forks every worker.

It is forked before the runtime creates any thread or ZeroMQ context, so each
worker starts as a clean copy of the program as it was at boot (with the
user's classes, even those of a ``__main__`` without a main guard) in about a
millisecond. It reaps its children through pidfds and reports their exits.
It exits, killing its workers, when the parent closes the socket pair or dies.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import socket
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from ..errors import BootError
from ..kernel import protocol as p
from ..kernel._boundary import SlotTable
from ._forksafety import logging_quiet, other_threads
from ._zygote import Entry, Zygote


def _resolve(entry: str) -> Entry:
    module, _, attr = entry.partition(":")
    fn: Entry = getattr(importlib.import_module(module), attr)
    return fn


def _preparation(entry: str) -> Callable[[], None] | None:
    """The ``prepare()`` of the entry point's module, if it has one: run once in the fork server."""
    prepare = getattr(importlib.import_module(entry.partition(":")[0]), "prepare", None)
    return prepare if callable(prepare) else None


class ForkServer:
    """The parent's handle on the fork server process."""

    def __init__(
        self,
        components: Mapping[str, tuple[str, object]],
        *,
        endpoint: str,
        slots: SlotTable,
        entry: str,
        run_dir: Path,
        waiting: Collection[threading.Thread] = (),
    ) -> None:
        """Fork the fork server; ``waiting``: threads known to wait for the boot, holding nothing."""
        fn = _resolve(entry)
        prepare = _preparation(entry)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for stream in (sys.stdout, sys.stderr):
            if stream is None:  # a daemon started with fd 1 or 2 closed has none
                continue
            try:
                stream.flush()  # or the children would print the parent's buffered output again
            except (OSError, ValueError):
                pass  # closed or broken: nothing of it can be printed twice
        #: The threads (other than the runtime's) alive at the fork: what they held stays held in every worker.
        self.threads: list[str] = []
        #: Where the workers' sockets live.
        self.run_dir = run_dir
        with warnings.catch_warnings(), logging_quiet():
            # Forking a threaded host is safe here: the child only runs this module's loop.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.threads = other_threads(waiting)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                ours.close()
                if prepare is not None:
                    prepare()
                Zygote(theirs, dict(components), endpoint, slots, fn, run_dir).run()
            except BaseException:  # say why, or the parent only learns that it exited
                traceback.print_exc()
            finally:
                os._exit(0)
        theirs.close()
        self.pid = pid
        self._sock = ours
        self._sock.setblocking(False)
        self._buffer = bytearray()
        self._write_lock = threading.Lock()

    def fileno(self) -> int:
        """The socket to poll for reports."""
        return self._sock.fileno()

    def spawn(
        self,
        worker: str,
        incarnation: int,
        slot: int,
        pickled: bytes | None = None,
        argv: list[str] | None = None,
        *,
        identity: bytes,
        token: bytes,
        gated: bool = False,
    ) -> None:
        """Ask for a new worker process with this routing id and secret; the answer arrives as a report.

        ``gated``: it sets up and says hello, then waits for the parent's Go to run its component.
        """
        self._send(p.Spawn(worker, incarnation, slot, pickled, argv, identity, token, gated))

    def _send(self, frame: p.Spawn | p.Quit) -> None:
        data = p.pack_stream(frame)
        with self._write_lock:
            self._sock.setblocking(True)
            try:
                self._sock.sendall(data)
            finally:
                self._sock.setblocking(False)

    def reports(self) -> list[p.ForkReport]:
        """Read every report available now (never blocks)."""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:  # ECONNRESET: it died with requests unread
                raise BootError(f"the fork server exited ({exc})") from exc
            if not chunk:
                raise BootError("the fork server exited")
            self._buffer += chunk
        return [p.decode(f, p.FORK_REPORTS) for f in p.unpack_stream(self._buffer)]

    def close(self, timeout: float = 5.0) -> None:
        """Ask the fork server to exit and reap it."""
        try:
            self._send(p.Quit())
        except OSError:
            pass
        self._sock.close()
        _reap(self.pid, timeout)


def _reap(pid: int, timeout: float) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    finally:
        os.close(fd)

"""The parent's file descriptors: as many as allowed, and never all of them handed to strangers.

libzmq aborts the whole process when it cannot get an fd where it needs one:
its ipc listener asserts that ``accept()`` failed with anything but EMFILE
(libzmq 4.3, ipc_listener.cpp: ``errno_assert`` lists EAGAIN, EINTR,
ECONNABORTED, EPROTO, ENFILE). Strangers cannot hold connections (both
endpoints authenticate at the handshake), but a flood of connection attempts
still holds an fd each until refused; running short is turned into a typed
condition (``runtime.fault`` part ``fds``) and the doors are closed long before
the limit.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from pathlib import Path

#: Above this fraction of the soft limit, control connections are refused.
HIGH = 0.8
#: Above this fraction, new workers cannot connect either (those connected stay).
HIGHER = 0.9
#: Below this fraction both are served again.
LOW = 0.6
#: How often the parent counts its open fds (seconds): one listdir of /proc/self/fd.
PERIOD = 0.1


def raise_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as far as the kernel allows); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = soft
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # a limit we cannot raise is a limit we live with
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def table_size() -> int | None:
    """The size of this process's fd table (``FDSize`` in /proc/self/status): no open fd is numbered above it.

    One short read, whatever the number of fds: while it is far below the limit, so is the count.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"FDSize:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def open_count(limit: int) -> int:
    """How many fds this process has open (the limit itself if it cannot even look)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return limit
        raise


class FdGuard:
    """A periodic job of the hub: refuse control connections, then new workers', while fds run short."""

    def __init__(
        self,
        accept: Callable[[bool], None],
        fault: Callable[[str, str, str], None],
        recovered: Callable[[str], None],
        accept_workers: Callable[[bool], None] | None = None,
    ) -> None:
        self._accept = accept
        self._accept_workers = accept_workers
        self._fault = fault
        self._recovered = recovered
        self.refusing = False
        #: Whether the workers' endpoint is closed to new connections too.
        self.refusing_workers = False

    def check(self) -> None:
        """Count the open fds against the soft limit (read each time: someone may change it)."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return
        if not self.refusing:
            size = table_size()
            if size is not None and size < HIGH * limit:
                return  # every fd is numbered below the table's size: fewer are open than that
        count = open_count(limit)
        closing_control = not self.refusing and count >= HIGH * limit
        closing_workers = self._accept_workers is not None and not self.refusing_workers and count >= HIGHER * limit
        if closing_control:
            self.refusing = True
            self._accept(False)
        if closing_workers:
            assert self._accept_workers is not None
            self.refusing_workers = True
            self._accept_workers(False)
        if closing_control or closing_workers:  # one report per step, however many it took at once
            closed = (
                "control connections are refused and new workers cannot connect (those connected stay)"
                if self.refusing_workers
                else "control connections are refused (and those open closed)"
            )
            self._fault(
                "fds",
                "fd_pressure",
                f"{count} of {limit} file descriptors open: {closed} until fewer than {int(LOW * limit)} are",
            )
        elif self.refusing and count < LOW * limit:
            if self.refusing_workers and self._accept_workers is not None:
                self._accept_workers(True)  # if this raises, the next period tries again
                self.refusing_workers = False
            self.refusing = False
            self._accept(True)
            self._recovered("fds")

"""``bussdcc logs WORKER``: the end of a worker's log file, and with ``-f`` every line added to it.

The files are the runtime's (``Runtime(log_dir=...)``, ``bussdcc run --log-dir``):
``<worker>.log``, rotated to ``<worker>.log.1`` (the newest) ... ``.log.N``. The last
lines are taken across the rotated files too; a follower notices a rotation (the
path names another file, or a shorter one) and goes on with the new file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import BussdccError
from ..kernel._layout import alive, locate, read_info
from ..kernel._postmortem import LOG_SUFFIX, log_file

#: Seconds between looks at a followed file.
POLL = 0.1
_BLOCK = 64 * 1024


def find_log_dir(log_dir: str | None, runtime: str | None, run_dir: str | None) -> tuple[Path, Callable[[], bool]]:
    """The log directory to read, and whether its writer has ended (never, for a directory given as such)."""
    if log_dir is not None:
        path = Path(log_dir)
        if not path.is_dir():
            raise BussdccError(f"no log directory {path}")
        return path, lambda: False
    found = locate(runtime, run_dir)
    info = read_info(found)
    if info is None or info.log_dir is None:
        name = info.name if info is not None else found.name
        raise BussdccError(
            f"the runtime {name!r} writes no log files (start it with --log-dir DIR, or [runtime] log_dir)"
        )
    pid = info.pid
    # Its run directory goes last at shutdown, once the log files are closed.
    return info.log_dir, lambda: not found.is_dir() or not alive(pid)


def _rotated(path: Path) -> list[Path]:
    """The rotated files of ``path``, oldest first (``.N`` ... ``.1``)."""
    found: list[tuple[int, Path]] = []
    for entry in path.parent.glob(f"{path.name}.*"):
        suffix = entry.name[len(path.name) + 1 :]
        if suffix.isdigit():
            found.append((int(suffix), entry))
    return [entry for _, entry in sorted(found, reverse=True)]


def _last_lines(f: BinaryIO, end: int, count: int) -> list[bytes]:
    """Up to ``count`` last lines of ``f``'s first ``end`` bytes, read from the end backwards."""
    if count <= 0 or end <= 0:
        return []
    data = b""
    pos = end
    while pos > 0 and data.count(b"\n") <= count:
        step = min(_BLOCK, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    lines = data.splitlines(keepends=True)
    if pos > 0:
        lines = lines[1:]  # the first may be the end of a line that began before what was read
    return lines[-count:]


def tail(current: BinaryIO | None, path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of the log at ``path`` (``current``: its file, open), across its rotated files.

    ``current`` is left where those lines end, so that following it goes on from there.
    """
    out: list[bytes] = []
    if current is not None:
        end = current.seek(0, os.SEEK_END)
        out = _last_lines(current, end, count)
        current.seek(end)
    for older in reversed(_rotated(path)):  # the newest rotated file first
        if len(out) >= count:
            break
        try:
            with open(older, "rb") as f:
                lines = _last_lines(f, f.seek(0, os.SEEK_END), count - len(out))
        except OSError:
            continue
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        out = lines + out
    return out


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BussdccError(f"cannot read {path}: {exc.strerror}") from None


def _replaced(f: BinaryIO, path: Path) -> bool:
    """Whether ``path`` no longer names the file ``f`` reads (rotated), or that file was cut short."""
    try:
        now = os.stat(path)
    except OSError:
        return False  # being rotated: the new file is not there yet
    mine = os.fstat(f.fileno())
    return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev) or now.st_size < f.tell()


def _chain(path: Path) -> list[tuple[Path, int]]:
    """The log's files and their inodes, oldest first: ``.N`` ... ``.1``, then the current one."""
    out = []
    for entry in [*_rotated(path), path]:
        try:
            out.append((entry, os.stat(entry).st_ino))
        except OSError:
            pass
    return out


def _successor(previous: int, path: Path) -> BinaryIO | None:
    """The file written after the one with inode ``previous`` (rotated since), open; else the current one.

    If that file is gone too (rotated past the backups kept), the oldest left is next: the least is lost.
    """
    for _ in range(3):
        chain = _chain(path)
        inodes = [ino for _, ino in chain]
        at = inodes.index(previous) + 1 if previous in inodes else 0
        if at >= len(chain):
            break  # it is the current file again (cut short, not rotated)
        name, ino = chain[at]
        f = _open(name)
        if f is None:
            continue
        if os.fstat(f.fileno()).st_ino == ino:
            return f
        f.close()  # rotated again meanwhile: look again
    return _open(path)


def _available(directory: Path) -> str:
    names = sorted(entry.name[: -len(LOG_SUFFIX)] for entry in directory.glob(f"*{LOG_SUFFIX}"))
    return ", ".join(names) or "none"


def show(
    worker: str,
    *,
    lines: int,
    follow: bool,
    log_dir: str | None,
    runtime: str | None,
    run_dir: str | None,
    out: BinaryIO | None = None,
    poll: float = POLL,
) -> int:
    """Print the last ``lines`` lines of ``worker``'s log; with ``follow``, every line added until interrupted.

    A follower of a runtime found through its run directory ends when that runtime has.
    """
    if lines < 0:
        raise BussdccError(f"-n takes a number >= 0, not {lines}")
    directory, ended = find_log_dir(log_dir, runtime, run_dir)
    path = log_file(directory, worker)
    sink = out if out is not None else sys.stdout.buffer
    current = _open(path)
    if current is None and not follow and not _rotated(path):
        raise BussdccError(f"no log of worker {worker!r} in {directory} (logs there: {_available(directory)})")
    try:
        sink.writelines(tail(current, path, lines))
        sink.flush()
        if not follow:
            return 0
        _follow(current, path, sink, ended, poll)
    finally:
        if current is not None:
            current.close()
    return 0


def _follow(current: BinaryIO | None, path: Path, sink: BinaryIO, ended: Callable[[], bool], poll: float) -> None:
    """Copy what is added to ``path`` to ``sink``, whole lines at a time, across rotations, until ``ended()``.

    After a rotation the file that was followed is read to its end, then each file written after it
    (found by inode among the rotated ones), so a follower a few rotations behind loses nothing.
    """
    pending = b""
    try:
        while True:
            last_look = ended()
            if current is None:
                current = _open(path)
            if current is not None:
                chunk = current.read()
                if not chunk and _replaced(current, path):
                    chunk = current.read()  # what was written before the rotation
                    if not chunk:
                        previous = os.fstat(current.fileno()).st_ino
                        current.close()
                        current = _successor(previous, path)
                        continue
                if chunk:
                    pending += chunk
                    end = pending.rfind(b"\n") + 1
                    if end:
                        sink.write(pending[:end])
                        sink.flush()
                        pending = pending[end:]
            if last_look:
                break
            time.sleep(poll)
    finally:
        if current is not None:
            current.close()

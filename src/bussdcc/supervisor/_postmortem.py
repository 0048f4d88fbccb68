"""What is kept of a worker's output for after its death: its last lines, and its log file.

The fork server hands every line a worker writes to the hub thread
(``Supervisor.on_fork_readable``), before it reports the worker's exit. There,
:class:`PostMortem` keeps the last lines of each live process in a small ring
(bounded in lines and bytes), which ``worker.exited`` carries after an abnormal
exit, and hands every line to :class:`WorkerLogs`, which writes one rotating log
file per worker (``logging.handlers.RotatingFileHandler``) on a thread of its own,
so a slow disk holds up neither the hub nor dispatch. What that thread cannot
take in time is dropped and counted in the worker's file, never queued without
bound; at most :data:`MAX_OPEN` files are open at once.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from ..errors import BootError, ConfigError
from ..kernel import protocol as p
from ..kernel._postmortem import log_file
from ._flow import weigh

#: Lines, and characters, of a process's last output that ``worker.exited`` carries.
LAST_LINES: Final = 100
LAST_CHARS: Final = 16 * 1024
#: Processes whose last lines are kept at once (a bound, should an exit never be reported).
_RINGS: Final = 4096
#: Output waiting for the log writer before new output is dropped (counted in the file).
LOG_BYTES: Final = 4 * 1024 * 1024
#: Log files open at once (the least recently written is closed first).
MAX_OPEN: Final = 64
#: Default size of a log file before it is rotated, and how many rotated files are kept.
LOG_MAX_BYTES: Final = 10 * 1024 * 1024
LOG_BACKUPS: Final = 5
#: Seconds shutdown waits for the log writer to write what is pending.
_CLOSE_WAIT: Final = 5.0


def render(stream: int, line: str) -> str:
    """A line as it is kept: a forwarded ``logging`` record as ``LEVEL logger: message``, else as written."""
    if stream != 2 or not line.startswith(p.LOG_MARK):
        return line
    payload = line[len(p.LOG_MARK) :]
    try:
        data = json.loads(payload)
        level, name, message = int(data["level"]), str(data["logger"]), str(data["message"])
    except (ValueError, KeyError, TypeError):
        return payload
    return f"{logging.getLevelName(level)} {name}: {message}"


def _stamp(when: float) -> str:
    ms = int(when * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{ms:03d}Z"


class _Ring:
    __slots__ = ("chars", "lines")

    def __init__(self) -> None:
        self.lines: deque[tuple[int, str]] = deque()
        self.chars = 0

    def add(self, stream: int, line: str) -> None:
        line = line[:LAST_CHARS]
        self.lines.append((stream, line))
        self.chars += len(line)
        while len(self.lines) > LAST_LINES or (self.chars > LAST_CHARS and len(self.lines) > 1):
            self.chars -= len(self.lines.popleft()[1])


class _Item:
    """Lines of one worker for its file, or (``close``) the order to close that file."""

    __slots__ = ("close", "lines", "pid", "size", "stream", "when", "worker")

    def __init__(
        self, worker: str, when: float, pid: int, stream: int, lines: list[str], *, close: bool = False
    ) -> None:
        self.worker = worker
        self.when = when
        self.pid = pid
        self.stream = stream
        self.lines = lines
        self.close = close
        self.size = weigh(len(lines), sum(len(line) for line in lines))


class _FileHandler(logging.handlers.RotatingFileHandler):
    """A worker's log file; a write that fails is reported through ``failed``, not printed."""

    def __init__(self, path: Path, max_bytes: int, backups: int, failed: Callable[[str], None]) -> None:
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True, errors="backslashreplace"
        )
        self._failed = failed
        self.ok = True

    def handleError(self, record: logging.LogRecord) -> None:
        """Report the failure (disk full, directory gone) instead of printing a traceback."""
        exc = sys.exc_info()[1]
        self.ok = False
        self._failed(f"cannot write {self.baseFilename}: {exc!r}")


class WorkerLogs:
    """One rotating log file per worker in ``directory``, written by the ``bussdcc-logs`` thread."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = LOG_MAX_BYTES,
        backups: int = LOG_BACKUPS,
        fault: Callable[[str], None] = lambda error: None,
        recovered: Callable[[], None] = lambda: None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.backups = backups
        self._fault = fault
        self._recovered = recovered
        self._failing = False
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._bytes = 0
        #: Lines dropped per worker since its last line was written (the writer was behind).
        self._dropped: dict[str, int] = {}
        self._closing = False
        self._files: OrderedDict[str, _FileHandler] = OrderedDict()  # the writer thread's alone
        #: Lines dropped in all (the writer was behind).
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="bussdcc-logs", daemon=True)
        self._thread.start()

    # ---- any thread (the hub's) ---------------------------------------------------------

    def write(self, worker: str, pid: int, stream: int, lines: list[str], when: float | None = None) -> None:
        """Queue lines of ``worker`` for its file; never blocks (dropped and counted when the writer is behind)."""
        item = _Item(worker, time.time() if when is None else when, pid, stream, lines)
        with self._cond:
            if self._closing:
                return
            if self._bytes + item.size > LOG_BYTES:
                self._dropped[worker] = self._dropped.get(worker, 0) + len(lines)
                self.dropped += len(lines)
                return
            self._queue.append(item)
            self._bytes += item.size
            self._cond.notify()

    def forget(self, worker: str) -> None:
        """Close the file of ``worker`` (it was removed) once what is queued for it is written."""
        with self._cond:
            if not self._closing:
                self._queue.append(_Item(worker, 0.0, 0, 0, [], close=True))
                self._cond.notify()

    def close(self) -> None:
        """Write what is pending (waiting a bounded time), close every file, end the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(_CLOSE_WAIT)

    # ---- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    break
                item = self._queue.popleft()
                self._bytes -= item.size
                dropped = 0 if item.close else self._dropped.pop(item.worker, 0)
            if item.close:
                self._close_file(item.worker)
                continue
            try:
                self._write(item, dropped)
            except Exception as exc:  # a bug of ours must not end the writer: say so, go on
                self._failed(f"cannot write the log of {item.worker!r}: {exc!r}")
        for worker in list(self._files):
            self._close_file(worker)

    def _write(self, item: _Item, dropped: int) -> None:
        worker, stream, lines = item.worker, item.stream, item.lines
        head = f"{_stamp(item.when)} [{item.pid}] "
        name = "stdout" if stream == 1 else "stderr" if stream == 2 else ""
        out = [f"{head}({dropped} lines dropped: the log writer was behind)"] if dropped else []
        for line in lines:
            if stream == 2 and line.startswith(p.LOG_MARK):
                out.append(head + render(stream, line))
            elif name:
                out.append(f"{head}{name}: {line}")
            else:
                out.append(head + line)
        handler = self._file(worker)
        handler.ok = True
        # Records of at most an eighth of a file each (or one line), so a file stays near its size.
        most = max(1, self.max_bytes // 8)
        chunk: list[str] = []
        size = 0
        for line in out:
            if chunk and size + len(line) + 1 > most:
                handler.handle(logging.LogRecord(worker, logging.INFO, "", 0, "\n".join(chunk), None, None))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            handler.handle(logging.LogRecord(worker, logging.INFO, "", 0, "\n".join(chunk), None, None))
        if handler.ok and self._failing:
            self._failing = False
            self._recovered()

    def _failed(self, error: str) -> None:
        if not self._failing:  # once per spell of failures
            self._failing = True
            self._fault(error)

    def _file(self, worker: str) -> _FileHandler:
        handler = self._files.get(worker)
        if handler is not None:
            self._files.move_to_end(worker)
            return handler
        while len(self._files) >= MAX_OPEN:
            self._close_file(next(iter(self._files)))
        handler = _FileHandler(log_file(self.directory, worker), self.max_bytes, self.backups, self._failed)
        self._files[worker] = handler
        return handler

    def _close_file(self, worker: str) -> None:
        handler = self._files.pop(worker, None)
        if handler is not None:
            try:
                handler.close()
            except Exception:
                pass


class _Hub(Protocol):
    def call_soon(self, fn: Callable[[], None]) -> None: ...
    def fault(self, part: str, kind: str, error: BaseException | str) -> None: ...
    def recovered(self, part: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LogOptions:
    """Where and how big the worker log files are (``Runtime(log_dir=...)``)."""

    directory: Path
    max_bytes: int = LOG_MAX_BYTES
    backups: int = LOG_BACKUPS

    def open(self, hub: _Hub) -> WorkerLogs:
        """Start the log writer; a write that fails is a ``runtime.fault`` (part ``logs``), once until one works."""

        def fault(error: str) -> None:
            hub.call_soon(lambda: hub.fault("logs", "write_failed", error))

        def recovered() -> None:
            hub.call_soon(lambda: hub.recovered("logs"))

        return WorkerLogs(
            self.directory, max_bytes=self.max_bytes, backups=self.backups, fault=fault, recovered=recovered
        )


def log_options(directory: Path | None, max_bytes: object, backups: object) -> LogOptions | None:
    """The log settings of a runtime, checked (:class:`ConfigError` naming the bad one); None without a directory."""
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1024:
        raise ConfigError(f"log_max_bytes must be an int >= 1024, not {max_bytes!r}")
    if not isinstance(backups, int) or isinstance(backups, bool) or backups < 1:
        raise ConfigError(f"log_backups must be an int >= 1, not {backups!r}")
    if directory is None:
        return None
    return LogOptions(Path(directory).absolute(), max_bytes, backups)


def open_log_dir(path: Path) -> Path:
    """Make the log directory (mode 0700 if new) and check it is writable; a :class:`BootError` if not."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BootError(f"cannot create the log directory {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise BootError(f"the log directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise BootError(f"the log directory {path} is not writable")
    return path


class PostMortem:
    """The last lines of each live worker process, and the worker log files (hub thread)."""

    def __init__(self, logs: WorkerLogs | None = None) -> None:
        self.logs = logs
        self._rings: dict[tuple[str, int], _Ring] = {}

    def output(self, report: p.Output) -> None:
        """Lines a worker wrote: kept in its ring, and queued for its log file."""
        key = (report.worker, report.pid)
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= _RINGS:
                del self._rings[next(iter(self._rings))]
            ring = self._rings[key] = _Ring()
        for line in report.lines:
            ring.add(report.stream, line)
        if self.logs is not None:
            self.logs.write(report.worker, report.pid, report.stream, report.lines)

    def last(self, worker: str, pid: int | None) -> tuple[str, ...]:
        """The last lines process ``pid`` of ``worker`` wrote (forgotten now: it has ended)."""
        ring = self._rings.pop((worker, pid), None) if pid is not None else None
        if ring is None:
            return ()
        return tuple(render(stream, line)[:LAST_CHARS] for stream, line in ring.lines)

    def note(self, worker: str, pid: int | None, text: str) -> None:
        """A line of the runtime's own about ``worker`` in its log file (how it ended, its stacks)."""
        if self.logs is not None:
            self.logs.write(worker, pid or 0, 0, text.split("\n"))

    def forget(self, worker: str) -> None:
        """``worker`` was removed: close its log file."""
        if self.logs is not None:
            self.logs.forget(worker)

    def close(self) -> None:
        """Write what is pending and close the log files."""
        if self.logs is not None:
            self.logs.close()

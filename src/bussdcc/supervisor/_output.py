"""What workers print, shown by the parent: each line prefixed with the worker's name and pid.

Lines reach the parent through the fork server, which reads the worker's
pipes, so a worker that crashes has already handed over all it wrote. A line
marked as a ``logging`` record re-enters the parent's logging, with the
worker's name as a field. Other lines also go to the control endpoint's event
stream as ``worker.output``; they are not dispatched, so a chatty driver
cannot flood the Processes.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable

from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._flow import OUTPUT_BYTES, weigh

#: Chunks of worker output waiting for our own stdout/stderr before new ones are dropped.
_MAX_PENDING = 1000
_CLOSE_GRACE = 1.0
_SYNC_WAIT = 0.5

#: ``logging`` extra fields of a forwarded record.
WORKER_FIELD = "worker"
WORKER_PID_FIELD = "worker_pid"


def _log(report: p.Output, payload: str) -> None:
    try:
        data = json.loads(payload)
        level, name, message = int(data["level"]), str(data["logger"]), str(data["message"])
    except (ValueError, KeyError, TypeError):
        level, name, message = logging.WARNING, "bussdcc.worker", payload
    logger = logging.getLogger(name if name != "root" else "bussdcc.worker")
    extra = {WORKER_FIELD: report.worker, WORKER_PID_FIELD: report.pid}
    logger.log(level, message, extra=extra)


class OutputSink:
    """Shows worker output (dispatch thread); ``tap`` feeds the control event stream."""

    def __init__(self, tap: Callable[[int, bytes], None] | None) -> None:
        self.tap = tap
        # Our own stdout may block (a pager that stopped reading): only this thread waits on it.
        self._lines: queue.Queue[tuple[int, str] | None] = queue.Queue(maxsize=_MAX_PENDING)
        #: Lines not shown because our own output was not being read.
        self.dropped = 0
        self._queued = 0
        self._pending_bytes = 0  # weight of what waits for the writer (see _flow)
        self._written = 0
        self._cond = threading.Condition()
        self._stuck = False
        self._writer = threading.Thread(target=self._write, name="bussdcc-output", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Show what is pending (waiting briefly for a blocked output), then end the writer."""
        try:
            self._lines.put(None, timeout=_CLOSE_GRACE)
        except queue.Full:
            return  # our output is blocked: the writer is a daemon and ends with the process
        self._writer.join(_CLOSE_GRACE)

    def _write(self) -> None:
        while (item := self._lines.get()) is not None:
            stream = sys.stdout if item[0] == 1 else sys.stderr
            if stream is None:  # a daemon may have no stdout at all
                continue
            try:
                stream.write(item[1])
                stream.flush()
            except (OSError, ValueError):
                pass  # our own output is closed: the lines still reached the event stream
            finally:
                with self._cond:
                    self._pending_bytes -= weigh(1, len(item[1]))
                    self._written += 1
                    if self._written >= self._queued:
                        self._stuck = False
                    self._cond.notify_all()

    def __call__(self, report: p.Output) -> None:
        name = "stdout" if report.stream == 1 else "stderr"
        shown: list[str] = []
        for line in report.lines:
            if report.stream == 2 and line.startswith(p.LOG_MARK):
                _log(report, line[len(p.LOG_MARK) :])
                continue
            shown.append(f"[{report.worker} {report.pid}] {line}")
            if self.tap is not None:
                msg = m.WorkerOutput(worker=report.worker, pid=report.pid, stream=name, line=line)
                self.tap(msg.severity, p.encode_envelope(msg, time.time(), report.worker))
        if not shown:
            return
        text = "\n".join(shown) + "\n"
        with self._cond:
            if self._pending_bytes + weigh(1, len(text)) > OUTPUT_BYTES:
                self.dropped += len(shown)
                return
            try:
                self._lines.put_nowait((report.stream, text))
            except queue.Full:
                self.dropped += len(shown)
                return
            self._pending_bytes += weigh(1, len(text))
            self._queued += 1
            ticket = self._queued
            # Shown before what is dispatched next (a worker's exit after its last words), unless
            # our output is blocked: then dispatch goes on, and lines wait (or drop) on their own.
            if not self._stuck and not self._cond.wait_for(lambda: self._written >= ticket, _SYNC_WAIT):
                self._stuck = True

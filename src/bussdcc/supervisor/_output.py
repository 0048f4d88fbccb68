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
import sys
import time
from collections.abc import Callable

from ..kernel import _builtin as m
from ..kernel import protocol as p

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

    def __call__(self, report: p.Output) -> None:
        stream = sys.stdout if report.stream == 1 else sys.stderr
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
        if shown and stream is not None:  # a daemon may have no stdout at all
            try:
                stream.write("\n".join(shown) + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # our own output is closed: the lines still reached the event stream

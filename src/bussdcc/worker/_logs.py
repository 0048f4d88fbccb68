"""Python ``logging`` in a worker: records go to the parent's logging, through the worker's stderr."""

from __future__ import annotations

import json
import logging
import os

from ..kernel.protocol import LOG_MARK, MAX_LINE


class ForwardHandler(logging.Handler):
    """Writes each record as one marked stderr line, which the parent turns back into a record."""

    def emit(self, record: logging.LogRecord) -> None:
        """Forward ``record`` (message and traceback, formatted here)."""
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            data = json.dumps({"level": record.levelno, "logger": record.name, "message": message})
            if len(data) + len(LOG_MARK) >= MAX_LINE:
                # The fork server forwards lines of up to MAX_LINE whole: a record must fit in one.
                keep = max(0, len(message) - (len(data) + len(LOG_MARK) - MAX_LINE) - 64)
                message = message[:keep] + " ... (cut)"
                data = json.dumps({"level": record.levelno, "logger": record.name, "message": message})
            # One write per record: whole, and never behind a buffered print.
            os.write(2, (LOG_MARK + data + "\n").encode())
        except Exception:
            self.handleError(record)


#: Set in a standalone worker's environment: its stderr is its own, so its logging stays local.
STANDALONE_ENV = "BUSSDCC_STANDALONE_WORKER"


def forward_logging() -> None:
    """Send the root logger's records to the parent instead of the handlers inherited from it."""
    if os.environ.get(STANDALONE_ENV):
        return
    root = logging.getLogger()
    if len(root.handlers) == 1 and type(root.handlers[0]) is ForwardHandler:
        return  # set up already, in the fork server this process was forked from
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(ForwardHandler())

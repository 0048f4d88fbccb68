"""What the parent, its workers and the command line agree on for post-mortems: log files and stack dumps.

* A worker's output is written by the parent to ``<log dir>/<file name of the
  worker>.log``, rotated to ``.log.1`` (the newest) ... ``.log.N``.
* A worker registers :mod:`faulthandler` for :data:`STACKS_SIGNAL` at start, dumping
  every thread's Python stack to :func:`stacks_path` in the run directory; the
  parent sends it that signal when it finds the worker hung, before it kills it.
  faulthandler's handler is C code that needs no GIL, so the dump is written even
  while native code holds the GIL.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
from pathlib import Path
from typing import Final

__all__ = ["LOG_SUFFIX", "STACKS_SIGNAL", "log_file", "run_dir_of", "stacks_path"]

#: The signal that makes a worker dump its Python stacks (a real-time signal: no library uses it for
#: anything else by default, and the group-wide signals SIGHUP/SIGUSR1/SIGUSR2 are the parent's).
STACKS_SIGNAL: Final = signal.SIGRTMIN + 6
#: The current log file of a worker ends with this; rotated ones add ``.1``, ``.2``, ...
LOG_SUFFIX: Final = ".log"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def log_file(log_dir: Path, worker: str) -> Path:
    """The current log file of ``worker`` in ``log_dir``.

    A name that is not a safe file name as it is (``/``, spaces, a leading dot, very
    long) gets a short hash of itself, so two workers never share a file.
    """
    safe = _SAFE.sub("_", worker)[:100]
    if safe != worker or safe.startswith("."):
        digest = hashlib.sha256(worker.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        safe = f"{safe.lstrip('.') or 'worker'}-{digest}"
    return log_dir / f"{safe}{LOG_SUFFIX}"


# These two run in every worker just after fork: plain strings, not pathlib, whose code and
# objects a worker would otherwise copy into its own memory (about 120 kB of its USS).


def stacks_path(run_dir: str | os.PathLike[str], pid: int, incarnation: int) -> str:
    """Where the worker process ``pid`` (its ``incarnation``-th) dumps its Python stacks."""
    return f"{os.fspath(run_dir)}/stacks.{pid}.{incarnation}"


def run_dir_of(endpoint: str) -> str | None:
    """The run directory of a workers' endpoint (``ipc://<run dir>/workers.sock``), if it is one."""
    if not endpoint.startswith("ipc://"):
        return None
    return endpoint[len("ipc://") :].rpartition("/")[0]

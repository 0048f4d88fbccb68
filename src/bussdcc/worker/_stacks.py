"""A worker's Python stacks, dumped for the parent when it finds the worker hung.

:mod:`faulthandler` writes every thread's stack from a C signal handler, which needs
no GIL: the dump arrives even while the worker is stuck in native code holding it.
The file is made before the handler is registered and stays open for the process's
life (the handler writes to its descriptor); the parent removes it when the worker
has ended.
"""

from __future__ import annotations

import faulthandler
import os

from ..kernel._boundary import WorkerSpec
from ..kernel._postmortem import STACKS_SIGNAL, run_dir_of, stacks_path


def dump_stacks_on_request(spec: WorkerSpec) -> None:
    """Register the stack dump for the parent's :data:`STACKS_SIGNAL` (skipped quietly if impossible)."""
    run_dir = run_dir_of(spec.endpoint)
    if run_dir is None:
        return
    path = stacks_path(run_dir, os.getpid(), spec.incarnation)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return  # no run directory to write in (deleted, full): the parent then kills without stacks
    try:
        faulthandler.register(STACKS_SIGNAL, file=fd, all_threads=True, chain=False)
    except (OSError, RuntimeError, ValueError):
        os.close(fd)
        try:
            os.unlink(path)  # no file: the parent sends no signal this worker would die of
        except OSError:
            pass

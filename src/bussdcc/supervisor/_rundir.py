"""Private run directories: where a runtime's sockets live while it runs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import BootError
from ..kernel._layout import RUN_BASE_ENV, SLOTS_FILE, WORKERS_SOCKET, run_base

_SUN_PATH_MAX = 107
#: Seconds between looks at whether the run directory is still there (one stat each).
CHECK_PERIOD = 0.5


def default_name() -> str:
    """The runtime's default name: the main script's stem."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "runtime")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem) or "runtime"


def make_run_dir(name: str) -> Path:
    """Create ``<base>/<name>-XXXX`` with mode 0700 (the base too, if new)."""
    base = run_base()
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = base.stat()
    except OSError as exc:
        raise BootError(f"cannot create the run base {base}: {exc}") from exc
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o022:
        raise BootError(f"run base {base} must be owned by uid {os.getuid()} and not group/world writable")
    # Any name is safe as a prefix: it cannot leave the base or name a directory that is not there.
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40].lstrip(".") or "runtime"
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))
    except OSError as exc:
        raise BootError(f"cannot create a run directory in {base}: {exc}") from exc
    if len(str(path / WORKERS_SOCKET)) > _SUN_PATH_MAX:
        shutil.rmtree(path, ignore_errors=True)
        raise BootError(f"run directory {path} is too long for an ipc:// socket; set {RUN_BASE_ENV}")
    return path


def remove_run_dir(path: Path) -> None:
    """Remove a run directory and its sockets."""
    shutil.rmtree(path, ignore_errors=True)


class RunDirGuard:
    """Notices the run directory deleted under a live runtime, says so once, and makes it again.

    Without it every worker (re)started afterwards times out at start, unable
    to connect, and nothing says why. Driven by ``schedule`` (the hub's timers):
    ``rebind`` binds the workers' endpoint again (on the hub thread), ``restore``
    rewrites the control files and binds the control endpoint again, ``report``
    says what happened (once per loss).
    """

    def __init__(
        self,
        path: Path,
        *,
        schedule: Callable[[float, Callable[[], None]], object],
        rebind: Callable[[], None],
        restore: Callable[[], None],
        report: Callable[[str], None],
        closed: Callable[[], bool] = lambda: False,
    ) -> None:
        self.path = path
        #: Whether the workers' socket is away on purpose (the parent short of fds): not a loss.
        self._closed = closed
        self._schedule = schedule
        self._rebind = rebind
        self._restore = restore
        self._report = report
        #: Whether the directory is gone and not made again yet (reported already).
        self.lost = False
        #: Whether the slots file was lost with it: it cannot be restored (workers map the old one).
        self.slots_lost = False
        self._stopped = False

    def start(self) -> None:
        """Look every CHECK_PERIOD seconds from now on."""
        self._schedule(CHECK_PERIOD, self._tick)

    def stop(self) -> None:
        """Look no more (shutdown removes the directory itself)."""
        self._stopped = True

    def missing(self) -> bool:
        """Whether workers cannot connect now: the directory or its socket is gone."""
        return not os.path.exists(self.path / WORKERS_SOCKET)

    def _tick(self) -> None:
        if self._stopped:
            return
        self._schedule(CHECK_PERIOD, self._tick)  # first: a failure below must not end the looking
        if self._closed():
            return
        try:
            os.stat(self.path / WORKERS_SOCKET)
            self.lost = False
            return
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError:
            return  # not a deletion (EACCES, ELOOP, ...): nothing this can make again
        try:
            self._repair()
        except Exception as exc:
            if not self.lost:
                self.lost = True
                self._report(
                    f"the run directory {self.path} (or its socket) was deleted under the live runtime and "
                    f"cannot be made again: {exc!r}; workers (re)started now cannot connect and will time out"
                )
            return
        first = not self.lost
        self.lost = False
        if first:
            self._report(self._repaired())

    def _repair(self) -> None:
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self.path.mkdir(mode=0o700, exist_ok=True)
        info = self.path.stat()
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise BootError(f"{self.path} was made again by someone else (uid {info.st_uid}, mode {info.st_mode:o})")
        if not (self.path / SLOTS_FILE).exists():
            self.slots_lost = True
        self._rebind()
        self._restore()

    def _repaired(self) -> str:
        text = (
            f"the run directory {self.path} (or its socket) was deleted under the live runtime: workers could "
            "not connect to it. It was made again and its sockets bound again; running workers were not affected"
        )
        if self.slots_lost:
            text += (
                "; its shared slots file cannot be restored (the workers map the deleted one), so workers "
                "started by exec (`bussdcc spawn`, `bussdcc worker`) cannot join until the runtime restarts"
            )
        return text

"""Private run directories: where a runtime's sockets live while it runs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from ..errors import BootError

#: Environment variable that overrides the base directory of run directories.
RUN_BASE_ENV = "BUSSDCC_RUN_BASE"
_SUN_PATH_MAX = 107


def run_base() -> Path:
    """``$BUSSDCC_RUN_BASE``, else ``$XDG_RUNTIME_DIR/bussdcc``, else ``/tmp/bussdcc-$UID``."""
    if override := os.environ.get(RUN_BASE_ENV):
        return Path(override)
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "bussdcc"
    return Path(tempfile.gettempdir()) / f"bussdcc-{os.getuid()}"


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
    if len(str(path / "workers.sock")) > _SUN_PATH_MAX:
        shutil.rmtree(path, ignore_errors=True)
        raise BootError(f"run directory {path} is too long for an ipc:// socket; set {RUN_BASE_ENV}")
    return path


def remove_run_dir(path: Path) -> None:
    """Remove a run directory and its sockets."""
    shutil.rmtree(path, ignore_errors=True)

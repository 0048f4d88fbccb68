"""The run directory's layout: what a runtime leaves there, and how a client finds it.

The server (``supervisor/``) writes these files and binds these sockets; the
command line (``cli/``) reads and connects to them. Both import the names from
here, so neither has to import the other to agree on them.

One run directory per live runtime, ``<run base>/<name>-XXXXXXXX`` (mode 0700):

* ``secret``: 32 random bytes (0600) every control request carries;
* ``runtime.json``: ``{"name", "pid", "started", "log_dir"}``, replaced atomically;
* ``workers.sock``: the endpoint workers connect to;
* ``control.sock``: the control endpoint the command line talks to;
* ``slots``: the shared counters, which workers started by exec open by path.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
import psutil

from ..errors import ControlError

#: Environment variable that overrides the base directory of run directories.
RUN_BASE_ENV: Final = "BUSSDCC_RUN_BASE"
#: The runtime's secret, readable only by its user.
SECRET_FILE: Final = "secret"
#: The runtime's name, pid and start time.
INFO_FILE: Final = "runtime.json"
#: The socket workers connect to.
WORKERS_SOCKET: Final = "workers.sock"
#: The control endpoint's socket.
CONTROL_SOCKET: Final = "control.sock"
#: The ZMTP PLAIN username a control client gives (its password is the secret).
CONTROL_USER: Final = b"bussdcc"
#: The shared counters: workers started by exec open it by path.
SLOTS_FILE: Final = "slots"


def run_base() -> Path:
    """``$BUSSDCC_RUN_BASE``, else ``$XDG_RUNTIME_DIR/bussdcc``, else ``/tmp/bussdcc-$UID``."""
    if override := os.environ.get(RUN_BASE_ENV):
        return Path(override)
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "bussdcc"
    return Path(tempfile.gettempdir()) / f"bussdcc-{os.getuid()}"


def workers_endpoint(run_dir: Path) -> str:
    """The ZeroMQ address workers connect to."""
    return f"ipc://{run_dir / WORKERS_SOCKET}"


def control_endpoint(run_dir: Path) -> str:
    """The ZeroMQ address of the control endpoint."""
    return f"ipc://{run_dir / CONTROL_SOCKET}"


class _Info(msgspec.Struct, frozen=True):
    name: str
    pid: int
    started: float
    log_dir: str | None = None


def write_identity(
    run_dir: Path, name: str, secret: bytes | None = None, started: float | None = None, *, log_dir: Path | None = None
) -> bytes:
    """Create the run directory's secret (mode 0600) and ``runtime.json``; return the secret.

    With ``secret``, write that one unless the file is there already (restoring a
    run directory deleted under the runtime: clients keep the secret they hold).
    """
    if secret is None:
        secret = secrets.token_bytes(32)
    try:
        fd = os.open(run_dir / SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        if started is None:
            raise
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
    info = _Info(
        name, os.getpid(), time.time() if started is None else started, None if log_dir is None else str(log_dir)
    )
    tmp = run_dir / f"{INFO_FILE}.tmp"
    tmp.write_bytes(msgspec.json.encode(info))
    tmp.rename(run_dir / INFO_FILE)  # readers never see half a file
    return secret


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """A running runtime found under the run base."""

    name: str
    pid: int
    run_dir: Path
    started: float
    #: Where it writes its workers' log files (None: it writes none).
    log_dir: Path | None = None


def read_info(run_dir: Path) -> RuntimeInfo | None:
    """What ``runtime.json`` in ``run_dir`` says, or None if it is missing or malformed."""
    try:
        info = msgspec.json.decode((run_dir / INFO_FILE).read_bytes(), type=_Info)
    except (OSError, msgspec.DecodeError):
        return None
    return RuntimeInfo(info.name, info.pid, run_dir, info.started, None if info.log_dir is None else Path(info.log_dir))


def read_secret(run_dir: Path) -> bytes:
    """The runtime's secret (readable only by its user)."""
    try:
        return (run_dir / SECRET_FILE).read_bytes()
    except PermissionError:
        raise ControlError(f"refused: cannot read the runtime's secret in {run_dir}") from None
    except OSError as exc:
        raise ControlError(f"cannot read the runtime's secret in {run_dir}: {exc.strerror}") from None


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has ended: only its parent has yet to hear of it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def serving(run_dir: Path) -> bool:
    """Whether a runtime serves a control endpoint in ``run_dir`` (the socket goes when it shuts down)."""
    return (run_dir / CONTROL_SOCKET).exists()


def running(base: Path | None = None) -> list[RuntimeInfo]:
    """Every live runtime under ``base`` (the run base by default); stale directories are skipped."""
    base = base or run_base()
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    found: list[RuntimeInfo] = []
    for entry in entries:
        rt = read_info(entry)
        if rt is not None and alive(rt.pid) and serving(entry):
            found.append(rt)
    return found


def locate(name: str | None = None, run_dir: str | None = None) -> Path:
    """The run directory of the runtime named ``name`` (or the only one running)."""
    if run_dir is not None:
        path = Path(run_dir)
        if not serving(path):
            raise ControlError(f"no runtime is running in {path}")
        return path
    live = running()
    matches = [r for r in live if name is None or r.name == name]
    if not matches:
        where = run_base()
        if name is None:
            raise ControlError(f"no runtime is running (looked in {where})")
        others = ", ".join(sorted({r.name for r in live})) or "none"
        raise ControlError(f"no runtime named {name!r} is running (running: {others}; looked in {where})")
    if len(matches) > 1:
        listing = ", ".join(f"{r.name} (pid {r.pid}, {r.run_dir})" for r in matches)
        hint = "use --run-dir" if name is not None else "name one"
        raise ControlError(f"{len(matches)} runtimes are running, {hint}: {listing}")
    return matches[0].run_dir

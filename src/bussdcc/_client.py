"""The command line's side of the control endpoint: finding a runtime, and talking to it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil
import zmq

from .errors import ControlError, ProtocolError
from .kernel import protocol as p
from .supervisor._control import CONTROL_SOCKET, INFO_FILE, SECRET_FILE, client_credentials
from .supervisor._rundir import run_base


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """A running runtime found under the run base."""

    name: str
    pid: int
    run_dir: Path
    started: float


def _alive(pid: int) -> bool:
    try:
        # A zombie has ended: only its parent has yet to hear of it.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def running(base: Path | None = None) -> list[RuntimeInfo]:
    """Every live runtime under ``base`` (the run base by default); stale directories are skipped."""
    base = base or run_base()
    found: list[RuntimeInfo] = []
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    for entry in entries:
        try:
            info = json.loads((entry / INFO_FILE).read_text())
            rt = RuntimeInfo(str(info["name"]), int(info["pid"]), entry, float(info["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(rt.pid) and (entry / CONTROL_SOCKET).exists():
            found.append(rt)
    return found


def locate(name: str | None = None, run_dir: str | None = None) -> Path:
    """The run directory of the runtime named ``name`` (or the only one running)."""
    if run_dir is not None:
        path = Path(run_dir)
        if not (path / CONTROL_SOCKET).exists():
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


@dataclass(frozen=True, slots=True)
class Streamed:
    """One message of the event stream: its severity, its encoded Envelope, and how many were missed before it."""

    severity: int
    item: msgspec.Raw
    dropped: int


def read_secret(run_dir: Path) -> bytes:
    """The runtime's secret (readable only by its user)."""
    try:
        return (run_dir / SECRET_FILE).read_bytes()
    except PermissionError:
        raise ControlError(f"refused: cannot read the runtime's secret in {run_dir}") from None
    except OSError as exc:
        raise ControlError(f"cannot read the runtime's secret in {run_dir}: {exc.strerror}") from None


class Client:
    """One connection to a runtime's control endpoint."""

    def __init__(self, run_dir: Path, secret: bytes | None = None) -> None:
        self.run_dir = run_dir
        self.secret = read_secret(run_dir) if secret is None else secret
        self._zctx = zmq.Context(io_threads=1)
        self._sock: zmq.Socket[bytes] = self._zctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        client_credentials(self._sock, self.secret)
        # A wrong secret is refused at the handshake: without this, that would look like silence.
        self._refusals = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._refusals, zmq.POLLIN)
        self._sock.connect(f"ipc://{run_dir / CONTROL_SOCKET}")

    def close(self) -> None:
        """Close the connection."""
        self._sock.disable_monitor()
        self._refusals.close(0)
        self._sock.close(0)
        self._zctx.term()

    def _poll(self, timeout_ms: int | None) -> bool:
        """Whether a reply is waiting (within ``timeout_ms``); raise :class:`ControlError` if the secret was refused."""
        events = dict(self._poller.poll(timeout_ms))
        if self._refusals in events:
            raise ControlError("refused: wrong secret: nothing was done")
        return self._sock in events

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, request: p.ControlRequest) -> None:
        """Send one request."""
        self._sock.send(p.encode(request))

    def receive(self, timeout: float | None) -> p.ControlReply:
        """The next reply; raise :class:`ControlError` for a refusal, a failure or silence."""
        if not self._poll(None if timeout is None else int(timeout * 1000)):
            raise ControlError(f"the runtime did not answer within {timeout:g}s")
        try:
            reply = p.decode_control_reply(self._sock.recv())
        except ProtocolError as exc:
            raise ControlError(f"bad reply from the runtime: {exc}") from None
        if isinstance(reply, p.Refused):
            raise ControlError(f"refused: {reply.reason}")
        if isinstance(reply, p.Failed):
            raise ControlError(reply.error)
        return reply

    def call(self, request: p.ControlRequest, timeout: float = 10.0) -> p.ControlReply:
        """Send ``request`` and wait for its reply."""
        self.send(request)
        return self.receive(timeout)

    def events(self, backlog: int, follow: bool, poll: float = 0.5) -> Iterator[Streamed | None]:
        """The last ``backlog`` messages, None, then (``follow``) every new one until the runtime ends."""
        self.send(p.SubscribeRequest(self.secret, backlog))
        while True:
            if not self._poll(int(poll * 1000)):
                if _gone(self.run_dir):
                    return  # the runtime ended
                continue
            reply = self.receive(0)
            if isinstance(reply, p.Done):
                yield None  # the end of the backlog
                if not follow:
                    return
                continue
            if isinstance(reply, p.Events):
                dropped = reply.dropped
                for severity, item in zip(reply.severities, reply.items, strict=True):
                    yield Streamed(severity, item, dropped)
                    dropped = 0


def _gone(run_dir: Path) -> bool:
    return not (run_dir / CONTROL_SOCKET).exists()


def wait_gone(run_dir: Path, pid: int | None, timeout: float) -> bool:
    """Wait until the runtime in ``run_dir`` has shut down (its process may live on: an embedded runtime)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The run directory goes last, once every worker has stopped.
        if _gone(run_dir) or (pid is not None and not _alive(pid)):
            return True
        time.sleep(0.02)
    return False


def runtime_name(run_dir: Path) -> str:
    """The name recorded in ``run_dir``."""
    try:
        return str(json.loads((run_dir / INFO_FILE).read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return run_dir.name


def runtime_pid(run_dir: Path) -> int | None:
    """The pid recorded in ``run_dir``."""
    try:
        return int(json.loads((run_dir / INFO_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

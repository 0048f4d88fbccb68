"""The command line's side of the control endpoint: finding a runtime, and talking to it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq

from ..errors import ControlError, ProtocolError
from ..kernel import protocol as p
from ..kernel._layout import CONTROL_USER, alive, control_endpoint, locate, read_info, read_secret, running, serving

__all__ = ["Client", "Streamed", "locate", "read_secret", "running", "runtime_name", "runtime_pid", "wait_gone"]


@dataclass(frozen=True, slots=True)
class Streamed:
    """One message of the event stream: its severity, its encoded Envelope, and how many were missed before it."""

    severity: int
    item: msgspec.Raw
    dropped: int
    #: Dispatch time (ns) and, for a worker's message, its incarnation and sequence number.
    origin: p.Origin = (0, 0, 0)


def client_credentials(sock: zmq.Socket[bytes], secret: bytes) -> None:
    """Make ``sock`` prove the runtime's secret at the handshake (before it connects to the control endpoint)."""
    sock.setsockopt(zmq.PLAIN_USERNAME, CONTROL_USER)
    sock.setsockopt(zmq.PLAIN_PASSWORD, secret)


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
        self._sock.connect(control_endpoint(run_dir))

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
            reply = p.decode(self._sock.recv(), p.CONTROL_REPLIES)
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
                origins = reply.origins if len(reply.origins) == len(reply.items) else [(0, 0, 0)] * len(reply.items)
                for severity, item, origin in zip(reply.severities, reply.items, origins, strict=True):
                    yield Streamed(severity, item, dropped, origin)
                    dropped = 0


def _gone(run_dir: Path) -> bool:
    return not serving(run_dir)


def wait_gone(run_dir: Path, pid: int | None, timeout: float) -> bool:
    """Wait until the runtime in ``run_dir`` has shut down (its process may live on: an embedded runtime)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The run directory goes last, once every worker has stopped.
        if _gone(run_dir) or (pid is not None and not alive(pid)):
            return True
        time.sleep(0.02)
    return False


def runtime_name(run_dir: Path) -> str:
    """The name recorded in ``run_dir``."""
    info = read_info(run_dir)
    return info.name if info is not None else run_dir.name


def runtime_pid(run_dir: Path) -> int | None:
    """The pid recorded in ``run_dir``."""
    info = read_info(run_dir)
    return info.pid if info is not None else None

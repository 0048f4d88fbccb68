"""The control endpoint: a ROUTER beside the worker endpoint that steers a live runtime.

Only holders of the runtime's secret (a 0600 file in the run directory) are
served. Requests are answered from the ``bussdcc-control`` thread; those that
wait for workers (start, stop, spawn, ...) each run on a daemon thread of their
own, so a slow stop never holds up a status, a spawn stuck in an import never
holds up a stop, and nothing stuck in user code keeps the process alive at exit.
Subscribers receive every dispatched message; a slow one misses messages
(counted) rather than slowing dispatch.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import zmq

from ..errors import BootError, BussdccError, ProtocolError
from ..kernel import protocol as p
from ..kernel._layout import control_endpoint, write_identity
from ..kernel.protocol import RECENT
from . import _control_ops as ops
from ._flow import ITEM_OVERHEAD, SUBSCRIBER_BYTES, weigh
from ._managed import ManagedRuntime
from ._wake import WakePipe
from ._zap import close_router, open_router, zap_replies

#: Dispatched messages queued for subscribers before newer ones are dropped.
_MAX_QUEUED = 10_000
_MAX_REQUEST = 1024 * 1024
#: Messages per frame to a subscriber, and frames libzmq holds for one (together, its bound in bytes).
_CHUNK = 256
_CHUNK_BYTES = 256 * 1024
_SUB_HWM = 256
#: Requests that wait on workers (each on a thread of its own) served at once; more are refused.
_MAX_OPS = 64
#: A connection that has not completed the ZMTP handshake within this is closed: strangers
#: cannot hold the parent's fds for free.
_HANDSHAKE_MS = 2000
#: The ZAP domain of the control endpoint (its clients give CONTROL_USER and the secret).
CONTROL_DOMAIN = b"bussdcc-control"


class ControlServer:
    """Serves the control endpoint of one runtime from its own thread."""

    def __init__(self, runtime: ManagedRuntime, run_dir: Path, *, denied: Callable[[], None]) -> None:
        """Serve ``runtime``; ``denied()`` says connections were refused at the handshake (see denied_since)."""
        self.runtime = runtime
        self._report_denied = denied
        self.run_dir = run_dir
        self.endpoint = control_endpoint(run_dir)
        self.started = time.time()
        self._log_dir = runtime.log_dir
        try:
            self._secret = write_identity(run_dir, runtime.name, log_dir=self._log_dir)
        except OSError as exc:
            raise BootError(f"cannot write the control secret in {run_dir}: {exc}") from exc
        self._waker = WakePipe()
        self._running = True
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._replies: deque[tuple[bytes, bytes]] = deque()
        self._calls: deque[Callable[[], None]] = deque()
        self._events: deque[_Tapped] = deque()
        self._events_bytes = 0
        self._recent: deque[_Tapped] = deque(maxlen=RECENT)
        self._recent_bytes = 0
        self._tap_lock = threading.Lock()
        self._overflow = 0
        self._subscribers: dict[bytes, int] = {}  # identity -> messages it missed, not yet told
        self._skip: dict[bytes, int] = {}  # identity -> queued messages that predate its subscription
        #: identity -> messages dropped for the others before it subscribed, since the last send (not its loss).
        self._dropped_before: dict[bytes, int] = {}
        #: Messages dropped for slow subscribers since boot.
        self.dropped = 0
        self._watched: dict[int, int] = {}  # pidfd -> pid of a standalone worker
        #: Whether the endpoint is bound (it is not while the parent is short of fds).
        self.accepting = True
        self._sock: zmq.Socket[bytes] | None = None
        self._ops = 0  # requests running on threads of their own
        self._ops_lock = threading.Lock()
        #: Connections refused at the handshake and not yet handed to the supervisor's reporting.
        self._denied = 0
        self._denied_lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name="bussdcc-control", daemon=True)
        #: Also told of every message tapped, in the same order (the HTTP event stream); never blocks.
        self.listener: Callable[[int, bytes], None] | None = None

    @property
    def secret(self) -> bytes:
        """The run directory's secret: whoever holds it may steer the runtime."""
        return self._secret

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Bind the endpoint in the control thread; return once it serves."""
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            raise BootError(f"cannot bind {self.endpoint}: {self._error}") from self._error

    def stop(self) -> None:
        """Stop serving (idempotent); requests still running in user code are not waited for."""
        # Not waiting: a request stuck in user code (a target whose import hangs) must not hold
        # shutdown; its thread is a daemon, which the interpreter does not join at exit either.
        if self.thread.is_alive():
            self._running = False
            self._wake()
            self.thread.join()
        self._waker.close()

    def restore(self, report: Callable[[str], None]) -> None:
        """Write the secret and ``runtime.json`` again and bind the endpoint anew (run directory remade).

        The old listener goes on serving the clients connected through it; the
        new one gives the endpoint's path back to new clients. ``report`` is told
        (from the control thread) if the bind fails.
        """
        write_identity(self.run_dir, self.runtime.name, self._secret, self.started, log_dir=self._log_dir)
        self._calls.append(lambda: self._rebind(report))
        self._wake()

    def _rebind(self, report: Callable[[str], None]) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            report(f"cannot bind the control endpoint {self.endpoint} again: {exc}")

    def tap(self, severity: int, item: bytes, origin: p.Origin = (0, 0, 0)) -> None:
        """Keep a dispatched message (its encoded Envelope) and queue it for subscribers; never blocks.

        Called in dispatch order (under the runtime's dispatch lock); the tap
        lock keeps the recent list and the subscriber set in step with it.
        ``origin``: the dispatch time (ns) and, from a worker, its incarnation and sequence number.
        """
        listener = self.listener
        if listener is not None:
            listener(severity, item)
        weight = len(item) + ITEM_OVERHEAD  # weigh(1, len(item)), inline: this runs for every message
        entry = (severity, item, origin)
        recent = self._recent
        with self._tap_lock:  # not acquire() then try: see Dispatch.dispatch
            size = self._recent_bytes + weight
            if len(recent) == RECENT:
                size -= len(recent[0][1]) + ITEM_OVERHEAD
            recent.append(entry)
            while size > SUBSCRIBER_BYTES and len(recent) > 1:
                size -= weigh(1, len(recent.popleft()[1]))
            self._recent_bytes = size
            if not self._subscribers:
                return
            # Once one is dropped, all are until the next send: a smaller one let in after it would
            # arrive ahead of the count of what is missing before it.
            if self._overflow or len(self._events) >= _MAX_QUEUED or self._events_bytes + weight > SUBSCRIBER_BYTES:
                self._overflow += 1
                return
            self._events.append(entry)
            self._events_bytes += weight
            first = len(self._events) == 1
        if first:
            self._wake()

    def _wake(self) -> None:
        self._waker.wake()

    def accept(self, on: bool) -> None:
        """Serve new control connections, or not (``on`` False closes the endpoint and its connections); any thread."""
        self._calls.append(lambda: self._accept(on))
        self._wake()

    def _accept(self, on: bool) -> None:
        sock = self._sock
        if on == self.accepting or sock is None:
            return
        # Unbinding also closes every connection it accepted: what strangers held is freed.
        if on:
            sock.bind(self.endpoint)
        else:
            sock.unbind(self.endpoint)
        self.accepting = on

    def watch(self, pid: int) -> None:
        """Tell the supervisor when process ``pid`` (not a child of ours) ends (any thread)."""
        self._calls.append(lambda: self._watch(pid))
        self._wake()

    # ---- the thread ---------------------------------------------------------------

    def _main(self) -> None:
        # Only holders of the secret complete the handshake: a stranger cannot keep a
        # connection, hence an fd of the parent (where libzmq's ipc listener aborts the
        # process on EMFILE). The secret is still checked in each request too.
        options = {
            zmq.ROUTER_MANDATORY: 1,
            zmq.MAXMSGSIZE: _MAX_REQUEST,
            zmq.SNDHWM: _SUB_HWM,
            zmq.LINGER: 0,
            zmq.HANDSHAKE_IVL: _HANDSHAKE_MS,
        }
        try:
            router = open_router(self.endpoint, CONTROL_DOMAIN, options)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        _, zap, sock = router
        self._sock = sock
        self._ready.set()
        self._zap = zap
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(zap, zmq.POLLIN)
        self._poller.register(self._waker.fd, zmq.POLLIN)
        try:
            while self._running:
                try:
                    self._iterate(sock)
                except Exception:
                    traceback.print_exc()  # a bug here must not end the control plane
        finally:
            for fd in self._watched:
                os.close(fd)
            self._sock = None
            close_router(router)

    def _iterate(self, sock: zmq.Socket[bytes]) -> None:
        events = dict(self._poller.poll(1000))
        if self._waker.fd in events:
            self._waker.drain()
        if self._zap in events:
            zap_replies(self._zap, self._admit)
        while self._calls:
            self._calls.popleft()()
        for fd in [fd for fd in self._watched if fd in events]:
            self._exited(fd)
        if sock in events:
            while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                frames = sock.recv_multipart(zmq.NOBLOCK)
                if len(frames) == 2:
                    self._request(sock, frames[0], frames[1])
        while self._replies:
            identity, data = self._replies.popleft()
            self._send(sock, identity, data)
        self._publish(sock)

    def _admit(self, domain: bytes, username: bytes, password: bytes) -> bool:
        if domain == CONTROL_DOMAIN and hmac.compare_digest(password, self._secret):
            return True
        with self._denied_lock:
            self._denied += 1
            first = self._denied == 1
        if first:
            # One hand-off in flight at most: a flood of attempts costs a counter increment each.
            self._report_denied()
        return False

    def denied_since(self) -> int:
        """Connections refused at the handshake since last asked (any thread)."""
        with self._denied_lock:
            count, self._denied = self._denied, 0
        return count

    def _send(self, sock: zmq.Socket[bytes], identity: bytes, data: bytes) -> bool:
        try:
            sock.send_multipart([identity, data], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._subscribers.pop(identity, None)  # the client is gone
            self._skip.pop(identity, None)
            self._dropped_before.pop(identity, None)
            return False

    def _publish(self, sock: zmq.Socket[bytes]) -> None:
        if not self._events and not self._overflow:
            return
        with self._tap_lock:  # taken together: no message both counted as missed and sent
            batch = list(self._events)
            self._events.clear()
            self._events_bytes = 0
            overflow, self._overflow = self._overflow, 0
        for identity in list(self._subscribers):
            # Dropped for want of room, they came after all of this batch: the next message sent says so.
            lost = overflow - self._dropped_before.pop(identity, 0)
            self.dropped += lost
            missed = self._subscribers[identity]
            skip = self._skip.pop(identity, 0)  # queued before it subscribed: in its backlog already
            if skip > len(batch):
                self._skip[identity] = skip - len(batch)
            ours = batch[skip:]
            for chunk in _chunks(ours):
                frame = _events_frame(missed, chunk)
                if self._send(sock, identity, p.encode(frame)):
                    missed = 0
                else:
                    missed += len(chunk)
                    self.dropped += len(chunk)
            if identity in self._subscribers:
                self._subscribers[identity] = missed + lost

    # ---- requests -----------------------------------------------------------------

    def _request(self, sock: zmq.Socket[bytes], identity: bytes, data: bytes) -> None:
        try:
            req = p.decode(data, p.CONTROL_REQUESTS)
        except ProtocolError as exc:
            self._send(sock, identity, p.encode(p.Refused(f"malformed request: {exc}")))
            return
        if not hmac.compare_digest(req.secret, self._secret):
            self._send(sock, identity, p.encode(p.Refused("wrong secret: nothing was done")))
            return
        try:
            reply = self._answer(sock, identity, req)
        except Exception as exc:  # the client gets an answer, whatever went wrong here
            reply = p.Failed(f"{type(exc).__name__}: {exc}")
        if reply is not None:
            self._send(sock, identity, p.encode(reply))

    def _answer(self, sock: zmq.Socket[bytes], identity: bytes, req: p.ControlRequest) -> p.ControlReply | None:
        """The reply to send now, or None if the pool will send it."""
        match req:
            case p.StatusRequest():
                reply: p.ControlReply = ops.status(self.runtime, self)
            case p.SubscribeRequest():
                # Under the tap lock (never the dispatch lock, which a slow handler may hold):
                # no message is both in the backlog and queued for it, none in neither.
                with self._tap_lock:
                    backlog = list(self._recent)[-req.backlog :] if req.backlog > 0 else []
                    self._subscribers[identity] = 0
                    queued = len(self._events)
                    if self._overflow:
                        self._dropped_before[identity] = self._overflow
                # Messages queued before it subscribed were meant for the others.
                for start in range(0, len(backlog), _CHUNK):
                    chunk = backlog[start : start + _CHUNK]
                    self._send(sock, identity, p.encode(_events_frame(0, chunk)))
                reply = p.Done("subscribed")
                if queued:
                    self._skip[identity] = queued
            case p.ShutdownRequest():
                self.runtime.request_shutdown(req.reason or "shutdown requested over the control endpoint")
                reply = p.Done("shutting down")
            case _:
                with self._ops_lock:
                    busy = self._ops >= _MAX_OPS
                    if not busy:
                        self._ops += 1
                if busy:
                    return p.Failed(f"busy: {_MAX_OPS} requests are in progress already; try again later")
                # A thread per request, never a shared pool: none waits behind another stuck in user code.
                name = f"bussdcc-control-op-{type(req).__name__}"
                threading.Thread(target=self._in_thread, args=(identity, req), name=name, daemon=True).start()
                return None
        return reply

    def _in_thread(self, identity: bytes, req: p.ControlRequest) -> None:
        reply: p.ControlReply
        try:
            reply = ops.act(self.runtime, self, req)
        except BussdccError as exc:
            reply = p.Failed(str(exc))
        except BaseException as exc:  # a target whose import raises SystemExit still gets an answer
            reply = p.Failed(f"{type(exc).__name__}: {exc}")
        finally:
            with self._ops_lock:
                self._ops -= 1
        self._replies.append((identity, p.encode(reply)))
        self._wake()

    # ---- standalone workers -----------------------------------------------------------

    def _watch(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._report_exit(pid)
            return
        self._watched[fd] = pid
        self._poller.register(fd, zmq.POLLIN)

    def _exited(self, fd: int) -> None:
        pid = self._watched.pop(fd)
        self._poller.unregister(fd)
        os.close(fd)
        self._report_exit(pid)

    def _report_exit(self, pid: int) -> None:
        self.runtime.worker_exited(pid)


#: A message as the control stream keeps it: its severity, encoded Envelope and origin.
_Tapped = tuple[int, bytes, p.Origin]


def _events_frame(dropped: int, chunk: list[_Tapped]) -> p.Events:
    return p.Events(
        dropped, [sev for sev, _, _ in chunk], [msgspec.Raw(item) for _, item, _ in chunk], [o for _, _, o in chunk]
    )


def _chunks(items: list[_Tapped]) -> list[list[_Tapped]]:
    """Split ``items`` into frames of at most _CHUNK messages and about _CHUNK_BYTES."""
    out: list[list[_Tapped]] = []
    chunk: list[_Tapped] = []
    size = 0
    for entry in items:
        if chunk and (len(chunk) >= _CHUNK or size + len(entry[1]) > _CHUNK_BYTES):
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(entry)
        size += len(entry[1])
    if chunk:
        out.append(chunk)
    return out


def describe(value: Any) -> Any:
    """A JSON-able form of a status value."""
    return msgspec.to_builtins(value)

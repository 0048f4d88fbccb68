"""Direct calls: a thread of the parent calls a device over a socket of its own, not through the hub.

Routed by the hub, a call from another thread crosses two thread hand-offs
(caller → hub thread → caller), each a wake-up and a GIL hand-over: most of a
call's cost. Each Device binds a call endpoint of its own (``worker/_direct``)
and names it in its ``Ready``; while the device is up, a calling thread takes a
DEALER connected there from a pool (one per incarnation, each socket used by
one thread at a time and handed over under :attr:`DirectCalls.lock`), sends,
and waits on that socket itself. The hub's part is only what it knows first:

- a device's *line* opens when its incarnation is ready and ends when the hub
  learns that incarnation ended (or the runtime shuts down);
- ending a line fails the calls in flight on it at once (``DeviceCrashed`` with
  the exit reason, or ``DeviceUnavailable``) and wakes their callers through
  each socket's eventfd, polled beside it; a reply that did arrive wins.

Everything else (a device not ready, ``wait=True``, unknown names, asyncio
callers, the hub thread) goes through the hub as before. A caller registers its
call under the lock and checks the line has not ended in the same step, so no
call can slip past its device's death.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import zmq

from ..kernel import protocol as p
from ..kernel._calls import CALLS_USER, call_key, callable_methods, unpack_reply

if TYPE_CHECKING:
    from ._latency import Histogram
    from ._workers import Incarnation, Worker

#: Sockets kept idle per device incarnation, and open at most (then calls go through the hub).
IDLE_MAX: Final = 16
OPEN_MAX: Final = 64
_HWM = 64
# Plain ints: flag enums cost a call each on the hot path.
_POLLIN: Final = int(zmq.POLLIN)
_NOBLOCK: Final = int(zmq.NOBLOCK)
#: How soon a caller looks again whether the parent has the items its call emitted, at first and at most.
_SEQ_POLL = 0.0002
_SEQ_POLL_MAX = 0.01


_lines = itertools.count(1)


class _Conn:
    """One DEALER to a device's call endpoint and the eventfd that wakes its user."""

    __slots__ = ("efd", "failed", "items", "sock")

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], line: Line) -> None:
        sock: zmq.Socket[bytes] = zctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.PLAIN_USERNAME, CALLS_USER)
            sock.setsockopt(zmq.PLAIN_PASSWORD, line.key)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, _HWM)
            sock.setsockopt(zmq.RCVHWM, _HWM)
            sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME)
            sock.connect(line.endpoint)
            self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            sock.close(0)
            raise
        self.sock = sock
        #: What a caller polls: the reply, or the hub's word that the line ended.
        self.items: list[tuple[Any, int]] = [(sock, _POLLIN), (self.efd, _POLLIN)]
        #: Set (under the lock) by the hub when the line ended with this socket's call in flight.
        self.failed: p.Reply | None = None

    def take(self, call_id: int, calls: DirectCalls) -> tuple[p.Reply, int] | None:
        """Read what arrived: the reply to ``call_id`` and the items sent before it, if here (others are late)."""
        sock = self.sock
        while True:
            try:
                data = sock.recv(_NOBLOCK)
            except zmq.Again:
                return None
            reply = unpack_reply(data)
            if reply is not None and reply[0].call_id == call_id:
                return reply
            with calls.lock:
                calls.late += 1  # the caller that used this socket before gave up on it
        return None  # nothing, or replies to calls whose callers gave up (this socket was theirs)

    def close(self) -> None:
        self.sock.close(0)
        os.close(self.efd)


class Line:
    """The direct path to one ready device incarnation."""

    __slots__ = (
        "device",
        "ended",
        "endpoint",
        "holders",
        "idle",
        "inc",
        "key",
        "latency",
        "methods",
        "number",
        "open",
        "pending",
        "worker",
    )

    def __init__(self, worker: Worker, inc: Incarnation, latency: Histogram) -> None:
        self.worker = worker
        self.inc = inc
        #: What may be called on it, and the device's call latency histogram (looked up once, here).
        self.methods = callable_methods(type(worker.component))
        self.latency = latency
        self.device = worker.name
        self.endpoint = inc.direct
        self.key = call_key(inc.token)
        #: Services told of this line (their routing ids): told again when it ends.
        self.holders: set[bytes] = set()
        self.number = next(_lines)
        self.ended = False
        self.idle: list[_Conn] = []
        self.open = 0
        #: Calls in flight on this line: call id → (its socket, the method).
        self.pending: dict[int, tuple[_Conn, str]] = {}


class DirectCalls:
    """The lines of the ready devices: opened and ended by the hub, used by any other thread."""

    def __init__(self) -> None:
        #: Guards every line's calls and sockets, and the call latency histograms.
        self.lock = threading.Lock()
        #: Device name → the line of its current ready incarnation.
        self.lines: dict[str, Line] = {}
        self._by_identity: dict[bytes, Line] = {}
        self._zctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._conns = 0
        self._closed = False
        #: Replies that reached a socket after their caller had stopped waiting (written under the lock).
        self.late = 0

    def in_flight(self) -> int:
        """Calls in flight on every line (any thread)."""
        return sum(len(line.pending) for line in tuple(self._by_identity.values()))

    # ---- the hub thread ----------------------------------------------------------------

    def open(self, worker: Worker, inc: Incarnation, latency: Histogram) -> None:
        """``inc`` is ready: calls may go straight to it (if it has an endpoint); their times go to ``latency``."""
        if not inc.direct:
            return
        line = Line(worker, inc, latency)
        with self.lock:
            if self._closed:
                return
            self.lines[worker.name] = line
            self._by_identity[inc.identity] = line

    def end(self, inc: Incarnation, failure: Callable[[int, str, str], p.Reply]) -> Line | None:
        """``inc`` ended: its line closes; each call in flight on it gets ``failure(call_id, device, method)`` now."""
        with self.lock:
            line = self._by_identity.pop(inc.identity, None)
            if line is None:
                return None
            if self.lines.get(line.device) is line:
                del self.lines[line.device]
            line.ended = True
            taken = sorted(line.pending.items())
            line.pending.clear()
            idle, line.idle = line.idle, []
            for call_id, (conn, method) in taken:
                conn.failed = failure(call_id, line.device, method)
        for conn in idle:
            self._drop(conn)
        for _, (conn, _) in taken:
            os.eventfd_write(conn.efd, 1)  # its user closes it
        return line

    def forget_holder(self, identity: bytes) -> None:
        """A worker incarnation ended: no line tells it anything any more (hub thread)."""
        for line in tuple(self._by_identity.values()):
            line.holders.discard(identity)

    def close(self, failure: Callable[[int, str, str], p.Reply]) -> list[Line]:
        """The runtime is shutting down: every line ends (its calls fail), and the context goes with the last socket."""
        with self.lock:
            self._closed = True
            lines = list(self._by_identity.values())
        for line in lines:
            self.end(line.inc, failure)
        self._drop(None)
        return lines

    def _drop(self, conn: _Conn | None) -> None:
        """Close a socket nobody uses any more; the context ends once closed with none left."""
        if conn is not None:
            conn.close()
        with self.lock:
            if conn is not None:
                self._conns -= 1
            zctx = self._zctx if self._closed and self._conns == 0 else None
            if zctx is not None:
                self._zctx = None
        if zctx is not None:
            zctx.term()

    # ---- calling threads ---------------------------------------------------------------

    def _checkout(self, line: Line, call_id: int, method: str) -> _Conn | None:
        """A socket to ``line`` with the call registered on it, or None if the line ended (or is full)."""
        with self.lock:
            if line.ended or self._closed:
                return None
            if line.idle:
                conn = line.idle.pop()
                conn.failed = None
                line.pending[call_id] = (conn, method)
                return conn
            if line.open >= OPEN_MAX:
                return None
            if self._zctx is None:
                self._zctx = zmq.Context(io_threads=1)
            zctx = self._zctx
            line.open += 1
            self._conns += 1
        try:
            conn = _Conn(zctx, line)
        except (OSError, zmq.ZMQError):  # out of descriptors, say: the hub's path still works
            with self.lock:
                line.open -= 1
                self._conns -= 1
            self._drop(None)
            return None
        with self.lock:
            if not line.ended:
                line.pending[call_id] = (conn, method)
                return conn
            line.open -= 1
        self._drop(conn)
        return None

    def _release(
        self, line: Line, conn: _Conn, call_id: int, took: float = -1.0, latency: Histogram | None = None
    ) -> bool:
        """The call is over for its caller: False if the hub had taken it first (then ``conn.failed`` says why)."""
        with self.lock:
            if latency is not None:
                latency.observe(took)
            mine = line.pending.pop(call_id, None) is not None
            keep = mine and not line.ended and len(line.idle) < IDLE_MAX
            if keep:
                line.idle.append(conn)
            else:
                line.open -= 1
        if not keep:
            self._drop(conn)
        return mine

    def call(
        self, line: Line, call_id: int, method: str, frame: bytes, *, timeout: float, latency: Histogram
    ) -> tuple[bool, p.Reply | None]:
        """Make one call on ``line``: ``(True, reply or None at the deadline)``, or ``(False, None)``: route it."""
        conn = self._checkout(line, call_id, method)
        if conn is None:
            return False, None
        started = time.monotonic()
        deadline = started + timeout
        try:
            conn.sock.send(frame, _NOBLOCK)
        except zmq.ZMQError:
            if self._release(line, conn, call_id):
                return False, None  # not sent: the hub's path will say what is wrong
            return True, conn.failed
        got = None
        while got is None and conn.failed is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if zmq.zmq_poll(conn.items, min(int(left * 1000) + 1, 2**31 - 1)):
                got = conn.take(call_id, self)
        if got is None and conn.failed is not None:
            got = conn.take(call_id, self)  # the device answered before it died: its answer stands
        if got is None:
            # At the deadline, or the line ended: either way the hub decided (or nobody did).
            return True, None if self._release(line, conn, call_id) else conn.failed
        reply, sent = got
        self._release(line, conn, call_id, time.monotonic() - started, latency)
        # What the call emitted left before its reply, on the worker's own connection: wait
        # until the parent has it, so that a reply never overtakes it (as when routed).
        inc = line.inc
        pause = _SEQ_POLL
        while inc.next_seq <= sent and not inc.exited and time.monotonic() < deadline:
            time.sleep(pause)  # rarely more than once: the items left just before the reply
            pause = min(2 * pause, _SEQ_POLL_MAX)  # a hub held back by a backlog may take a while
        return True, reply

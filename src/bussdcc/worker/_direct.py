"""A device's own call endpoint: the parent's calling threads reach it without the parent's I/O thread.

A call from a thread of the parent would otherwise cross two thread hand-offs
(the caller → the parent's I/O thread → the caller). Each Device binds a ROUTER
of its own next to the workers' socket, ``c<slot>.<incarnation>`` in the run
directory, and says where in its ``Ready``. The parent's callers connect a
DEALER each (pooled), authenticated like the workers' endpoint: ZMTP PLAIN,
admitted by a ZAP handler served inline by the device's main thread, whose
password is derived from this incarnation's secret (``call_key``): the parent
knows it, and hands it to the Services it routes calls to this device for, so
that their next calls come straight here too (see ``WorkerPort``).

Calls read here are queued and served by the device's main loop like those the
parent routes (one at a time, or on the call threads): never from inside a
read, so a device waiting on a call of its own serves nothing meanwhile. A
reply carries the number of items the worker had sent when it left (after they
were flushed), so that the caller can wait until the parent has them: a reply
still never overtakes what the call emitted.
"""

from __future__ import annotations

import hmac
from collections import deque
from typing import cast

import zmq

from ..errors import ProtocolError
from ..kernel import protocol as p
from ..kernel._boundary import WorkerSpec
from ..kernel._calls import CALLS_DOMAIN, CALLS_USER, call_endpoint, call_key, unpack_reply

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_HWM = 64
# Plain ints: flag enums cost a call each on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
#: The longest ipc:// path (sun_path less its terminating zero).
_SUN_PATH_MAX = 107


class DirectEndpoint:
    """The device's ROUTER for direct calls and its ZAP handler (used under the channel's socket lock)."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], spec: WorkerSpec) -> None:
        self.endpoint = call_endpoint(spec.endpoint, spec.slot, spec.incarnation)
        if len(self.endpoint) - len("ipc://") > _SUN_PATH_MAX:
            raise OSError(f"{self.endpoint} is too long for an ipc:// socket")
        self._key = call_key(spec.token)
        self.zap: zmq.Socket[bytes] = zctx.socket(zmq.REP)
        self.sock: zmq.Socket[bytes] = zctx.socket(zmq.ROUTER)
        try:
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(_ZAP_ENDPOINT)  # first: with no handler PLAIN handshakes fail (libzmq < 4.3: pass)
            self.sock.setsockopt(zmq.PLAIN_SERVER, 1)
            self.sock.setsockopt(zmq.ZAP_DOMAIN, CALLS_DOMAIN)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDHWM, _HWM)
            self.sock.setsockopt(zmq.RCVHWM, _HWM)
            self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME)
            self.sock.bind(self.endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        #: Calls read and not yet served: (the caller's routing id, the call).
        self.calls: deque[tuple[bytes, p.Call]] = deque()
        #: Replies of calls served on call threads, sent by the socket's holder: (routing id, reply, items sent).
        self.posted: deque[tuple[bytes, bytes, int]] = deque()

    def service(self, events: dict[object, int]) -> None:
        """Answer handshakes and read calls (whoever holds the channel's socket lock)."""
        if self.zap in events:
            self._answer_zap()
        if self.sock in events:
            self._read()

    def _answer_zap(self) -> None:
        while cast(int, self.zap.getsockopt(_EVENTS)) & _POLLIN:
            frames = self.zap.recv_multipart(zmq.NOBLOCK)
            request_id = frames[1] if len(frames) > 1 else b""
            ok = (
                len(frames) == 8
                and frames[0] == b"1.0"
                and frames[2] == CALLS_DOMAIN
                and frames[5] == b"PLAIN"
                and frames[6] == CALLS_USER
                and hmac.compare_digest(frames[7], self._key)
            )
            if ok:
                self.zap.send_multipart([b"1.0", request_id, b"200", b"OK", CALLS_USER, b""])
            else:
                self.zap.send_multipart([b"1.0", request_id, b"400", b"not the parent of this device", b"", b""])

    def _read(self) -> None:
        # One message per poll that found the socket readable: the next poll reports the next
        # one. Asking EVENTS or RCVMORE through pyzmq costs more than that poll, and ending on a
        # zmq.Again (an exception) more still; a frame's ``more`` is a plain attribute.
        sock = self.sock
        peer = sock.recv(_NOBLOCK, copy=False)
        if not peer.more:
            return
        part = sock.recv(_NOBLOCK, copy=False)  # a message arrives whole: its parts are here
        if part.more:  # more than [routing id, call]: nothing our callers send
            while sock.recv(_NOBLOCK, copy=False).more:
                pass
            return
        try:
            frame = p.decode(part.buffer, p.PARENT_FRAMES)
        except ProtocolError:
            return  # only the parent and its Services get in: a bug; the caller times out
        if isinstance(frame, p.Call):
            self.calls.append((peer.bytes, frame))

    def send(self, peer: bytes, reply: bytes, sent: int) -> None:
        """Send one reply to the caller ``peer``, with the items sent before it (dropped if the caller is gone)."""
        try:
            self.sock.send(peer, _NOBLOCK | _SNDMORE)
            self.sock.send(reply + sent.to_bytes(8, "little"), _NOBLOCK)
        except zmq.ZMQError:
            pass  # a caller that went away (or stopped reading) has given up on it

    def send_posted(self) -> None:
        """Send the replies the call threads posted."""
        while self.posted:
            self.send(*self.posted.popleft())

    def close(self) -> None:
        """Close both sockets (the path is removed with the listener)."""
        self.sock.close(0)
        self.zap.close(0)


# ---- a Service calling a device straight ----------------------------------------------------


class Route:
    """The way to one device incarnation the parent told this worker of (its ``line``)."""

    __slots__ = ("device", "ended", "endpoint", "key", "line", "sock")

    def __init__(self, frame: p.Route) -> None:
        self.device = frame.device
        self.line = frame.line
        self.endpoint = frame.endpoint
        self.key = frame.key
        self.sock: zmq.Socket[bytes] | None = None
        #: Set when the parent says the incarnation ended: a call waiting on it fails with this.
        self.ended: p.RouteEnded | None = None

    def open(self, zctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        """The DEALER to the device (made on first use)."""
        if self.sock is None:
            sock: zmq.Socket[bytes] = zctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.PLAIN_USERNAME, CALLS_USER)
            sock.setsockopt(zmq.PLAIN_PASSWORD, self.key)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, _HWM)
            sock.setsockopt(zmq.RCVHWM, _HWM)
            sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME)
            sock.connect(self.endpoint)
            self.sock = sock
        return self.sock

    def send(self, frame: bytes) -> bool:
        """Send a call (False if it cannot be queued now)."""
        assert self.sock is not None
        try:
            self.sock.send(frame, _NOBLOCK)
        except zmq.ZMQError:
            return False
        return True

    def take(self, call_id: int) -> p.Reply | None:
        """The reply to ``call_id`` if it is here (replies to calls whose deadline passed are dropped)."""
        sock = self.sock
        assert sock is not None
        while True:
            try:
                got = unpack_reply(sock.recv(_NOBLOCK))
            except zmq.Again:
                return None
            if got is not None and got[0].call_id == call_id:
                return got[0]

    def close(self) -> None:
        """Close the socket (the thread that used it)."""
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

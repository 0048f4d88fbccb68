"""A device's own call endpoint: the parent's calling threads reach it without the parent's I/O thread.

A call from a thread of the parent would otherwise cross two thread hand-offs
(the caller → the parent's I/O thread → the caller). Each Device binds a ROUTER
of its own next to the workers' socket, ``c<slot>.<incarnation>`` in the run
directory, and says where in its ``Ready``. The parent's callers connect a
DEALER each (pooled), authenticated like the workers' endpoint: ZMTP PLAIN,
admitted by a ZAP handler served inline by the device's main thread, whose
password is this incarnation's own secret (only the parent knows it).

Calls read here are queued and served by the device's main loop like those the
parent routes (one at a time, or on the call threads): never from inside a
read, so a device waiting on a call of its own serves nothing meanwhile. A
reply carries the number of items the worker had sent when it left (after they
were flushed), so that the caller can wait until the parent has them: a reply
still never overtakes what the call emitted.
"""

from __future__ import annotations

import hmac
import os
from collections import deque
from typing import cast

import zmq

from ..errors import ProtocolError
from ..kernel import protocol as p
from ..kernel._boundary import WorkerSpec
from ..kernel._calls import CALLS_DOMAIN, CALLS_USER

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_HWM = 64
#: The longest ipc:// path (sun_path less its terminating zero).
_SUN_PATH_MAX = 107


def endpoint_for(spec: WorkerSpec) -> str:
    """Where this incarnation's call endpoint is bound: next to the workers' socket."""
    folder = os.path.dirname(spec.endpoint.removeprefix("ipc://"))
    return f"ipc://{folder}/c{spec.slot}.{spec.incarnation}"


class DirectEndpoint:
    """The device's ROUTER for direct calls and its ZAP handler (used under the channel's socket lock)."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], spec: WorkerSpec) -> None:
        self.endpoint = endpoint_for(spec)
        if len(self.endpoint) - len("ipc://") > _SUN_PATH_MAX:
            raise OSError(f"{self.endpoint} is too long for an ipc:// socket")
        self._token = spec.token
        self.zap: zmq.Socket[bytes] = zctx.socket(zmq.REP)
        self.sock: zmq.Socket[bytes] = zctx.socket(zmq.ROUTER)
        try:
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(_ZAP_ENDPOINT)  # before the ROUTER: a PLAIN server without a handler admits anyone
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
        while cast(int, self.zap.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frames = self.zap.recv_multipart(zmq.NOBLOCK)
            request_id = frames[1] if len(frames) > 1 else b""
            ok = (
                len(frames) == 8
                and frames[0] == b"1.0"
                and frames[2] == CALLS_DOMAIN
                and frames[5] == b"PLAIN"
                and frames[6] == CALLS_USER
                and hmac.compare_digest(frames[7], self._token)
            )
            if ok:
                self.zap.send_multipart([b"1.0", request_id, b"200", b"OK", CALLS_USER, b""])
            else:
                self.zap.send_multipart([b"1.0", request_id, b"400", b"not the parent of this device", b"", b""])

    def _read(self) -> None:
        while cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frames = self.sock.recv_multipart(zmq.NOBLOCK)
            if len(frames) != 2:
                continue
            try:
                frame = p.decode(frames[1], p.PARENT_FRAMES)
            except ProtocolError:
                continue  # only the parent gets in: a bug, not an attack; the caller times out
            if isinstance(frame, p.Call):
                self.calls.append((frames[0], frame))

    def send(self, peer: bytes, reply: bytes, sent: int) -> None:
        """Send one reply to the caller ``peer`` (dropped if it is gone or its pipe is full)."""
        try:
            self.sock.send_multipart([peer, reply, sent.to_bytes(8, "little")], zmq.NOBLOCK)
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

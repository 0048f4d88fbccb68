"""Authentication at the transport: both endpoints admit a peer only once it proved a secret.

Each endpoint is a ZMTP PLAIN server whose context has a ZAP handler (RFC 27),
served inline by the thread that owns the socket (the hub for the workers', the
control thread for the control endpoint): a stranger's handshake fails, so it
never holds a connection, hence a file descriptor, of the parent.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import TypeAlias, cast

import zmq

#: Where libzmq asks a context's ZAP handler whether a peer may complete its handshake (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


def zap_replies(zap: zmq.Socket[bytes], admit: Callable[[bytes, bytes, bytes], bool]) -> None:
    """Answer every ZAP request waiting on ``zap`` (a REP socket) with ``admit(domain, username, password)``.

    Served inline by the thread that owns the authenticated socket's context,
    never from a thread of its own: a handshake waits for this answer, so it
    must come promptly whatever else that thread is doing. Request frames
    (RFC 27): version, request id, domain, address, routing id, mechanism,
    then the mechanism's credentials (PLAIN: username, password).
    """
    while cast(int, zap.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        frames = zap.recv_multipart(zmq.NOBLOCK)
        request_id = frames[1] if len(frames) > 1 else b""
        ok = False
        if len(frames) == 8 and frames[0] == b"1.0" and frames[5] == b"PLAIN":
            try:
                ok = admit(frames[2], frames[6], frames[7])
            except Exception:
                traceback.print_exc()  # refused: a fault here must never admit anyone
        if ok:
            zap.send_multipart([b"1.0", request_id, b"200", b"OK", frames[6], b""])
        else:
            zap.send_multipart([b"1.0", request_id, b"400", b"not a peer of this runtime", b"", b""])


def plain_server(sock: zmq.Socket[bytes], domain: bytes) -> None:
    """Make ``sock`` admit only peers its context's ZAP handler accepts (PLAIN; bind the handler first)."""
    sock.setsockopt(zmq.PLAIN_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)


Router: TypeAlias = tuple["zmq.Context[zmq.Socket[bytes]]", "zmq.Socket[bytes]", "zmq.Socket[bytes]"]


def open_router(endpoint: str, domain: bytes, options: Mapping[zmq.SocketOption, int]) -> Router:
    """A context of its own, its ZAP handler's socket, and a PLAIN ROUTER with ``options`` bound to ``endpoint``.

    The handler is bound before the ROUTER: libzmq 4.3 fails every PLAIN handshake while
    no ZAP handler is bound (older versions let anyone in), so no peer is refused for want
    of it. The owner serves the handler (:func:`zap_replies`) in its own poll loop. On
    failure everything made is closed and the ``zmq.ZMQError`` raised.
    """
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    zap: zmq.Socket[bytes] = zctx.socket(zmq.REP)
    sock: zmq.Socket[bytes] = zctx.socket(zmq.ROUTER)
    try:
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        plain_server(sock, domain)
        for option, value in options.items():
            sock.setsockopt(option, value)
        sock.bind(endpoint)
    except zmq.ZMQError:
        close_router((zctx, zap, sock))
        raise
    return zctx, zap, sock


def close_router(router: Router) -> None:
    """Close what :func:`open_router` made (idempotent)."""
    zctx, zap, sock = router
    sock.close(0)
    zap.close(0)
    zctx.term()

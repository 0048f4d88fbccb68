"""The control frames: typed both ways, and any bytes either decode or are a ProtocolError."""

from __future__ import annotations

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from bussdcc import ThreadedRuntime
from bussdcc.errors import ProtocolError
from bussdcc.kernel import protocol as p
from bussdcc.supervisor._control import client_credentials

REQUESTS: list[p.ControlRequest] = [
    p.StatusRequest(b"s"),
    p.WorkerRequest(b"s", "restart", "echo"),
    p.ShutdownRequest(b"s", "why"),
    p.SpawnRequest(b"s", "m:C", "n", '{"a": 1}', '{"restart": false}'),
    p.SubscribeRequest(b"s", 20),
    p.JoinRequest(b"s", "m:C", "n", 42),
]
REPLIES: list[p.ControlReply] = [
    p.Refused("no"),
    p.Failed("bad"),
    p.Done("ok"),
    p.StatusReply({"name": "x", "pid": 1}, [{"name": "w", "state": "running"}]),
    p.Joined(1, 2, "ipc:///x", 3),
    p.Events(2, [20], [msgspec.Raw(p.encode(p.Envelope("runtime.booted", msgspec.Raw(b"\x80"), 1.0, "runtime")))]),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_requests_round_trip(request_: p.ControlRequest) -> None:
    assert p.decode_control_request(p.encode(request_)) == request_


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_replies_round_trip(reply: p.ControlReply) -> None:
    decoded = p.decode_control_reply(p.encode(reply))
    assert type(decoded) is type(reply)
    assert p.encode(decoded) == p.encode(reply)


def test_a_reply_is_not_a_request() -> None:
    with pytest.raises(ProtocolError):
        p.decode_control_request(p.encode(p.Done("ok")))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_a_protocol_error(data: bytes) -> None:
    try:
        p.decode_control_request(data)
    except ProtocolError:
        pass


def test_garbage_on_the_control_socket_leaves_the_runtime_serving() -> None:
    rt = ThreadedRuntime(name="garbage")
    rt.start(timeout=30)
    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        assert rt.run_dir is not None
        client_credentials(sock, (rt.run_dir / "secret").read_bytes())  # past the handshake: junk inside
        sock.connect(f"ipc://{rt.run_dir / 'control.sock'}")
        junk = [b"", b"\x00", b"\xff" * 100, p.encode(p.Done("x")), p.encode([1, 2, 3]), b"\x92\xa6status\xc0"]
        for data in junk:
            sock.send(data)
            assert sock.poll(10_000)
            assert isinstance(p.decode_control_reply(sock.recv()), p.Refused)
        sock.send_multipart([b"two", b"parts"])  # not a request at all: ignored
        secret = (rt.run_dir / "secret").read_bytes()
        sock.send(p.encode(p.StatusRequest(secret)))
        assert sock.poll(10_000)
        reply = p.decode_control_reply(sock.recv())
        assert isinstance(reply, p.StatusReply) and reply.runtime["name"] == "garbage"
    finally:
        sock.close()
        zctx.term()
        rt.stop(timeout=30)

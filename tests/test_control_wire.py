"""The control frames: typed both ways, and any bytes either decode or are a ProtocolError."""

from __future__ import annotations

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from bussdcc import ThreadedRuntime
from bussdcc.cli._client import client_credentials
from bussdcc.errors import ProtocolError
from bussdcc.kernel import protocol as p

REQUESTS: list[p.ControlRequest] = [
    p.StatusRequest(b"s"),
    p.WorkerRequest(b"s", "restart", "echo"),
    p.ShutdownRequest(b"s", "why"),
    p.SpawnRequest(b"s", "m:C", "n", {"a": 1}, {"restart": False, "max_restarts": 3, "backoff_max": 2.5}),
    p.SubscribeRequest(b"s", 20),
    p.JoinRequest(b"s", "m:C", "n", 42),
    p.CallRequest(b"s", "dev", "read", [1, "two", [3]], {"unit": "c"}, 2.5),
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
    assert p.decode(p.encode(request_), p.CONTROL_REQUESTS) == request_


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_replies_round_trip(reply: p.ControlReply) -> None:
    decoded = p.decode(p.encode(reply), p.CONTROL_REPLIES)
    assert type(decoded) is type(reply)
    assert p.encode(decoded) == p.encode(reply)


def test_a_reply_is_not_a_request() -> None:
    with pytest.raises(ProtocolError):
        p.decode(p.encode(p.Done("ok")), p.CONTROL_REQUESTS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_a_protocol_error(data: bytes) -> None:
    try:
        p.decode(data, p.CONTROL_REQUESTS)
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
            assert isinstance(p.decode(sock.recv(), p.CONTROL_REPLIES), p.Refused)
        sock.send_multipart([b"two", b"parts"])  # not a request at all: ignored
        secret = (rt.run_dir / "secret").read_bytes()
        sock.send(p.encode(p.StatusRequest(secret)))
        assert sock.poll(10_000)
        reply = p.decode(sock.recv(), p.CONTROL_REPLIES)
        assert isinstance(reply, p.StatusReply) and reply.runtime["name"] == "garbage"
    finally:
        sock.close()
        zctx.term()
        rt.stop(timeout=30)


def _raw_request(tag: str, *fields: object) -> bytes:
    # A request as any client could write it, bypassing the typed constructors.
    return msgspec.msgpack.encode([tag, *fields])


def test_an_operation_outside_the_vocabulary_is_malformed() -> None:
    with pytest.raises(ProtocolError):
        p.decode(_raw_request("worker", b"s", "explode", "echo"), p.CONTROL_REQUESTS)


def test_config_policy_and_arguments_travel_as_values_not_json_text() -> None:
    spawn = p.decode(
        _raw_request("spawn_worker", b"s", "m:C", "n", {"every": [1, 2]}, {"restart": True}), p.CONTROL_REQUESTS
    )
    assert isinstance(spawn, p.SpawnRequest)
    assert spawn.config == {"every": [1, 2]} and spawn.policy == {"restart": True}
    call = p.decode(_raw_request("call_device", b"s", "dev", "read", [1, {"a": None}], {"k": 2}), p.CONTROL_REQUESTS)
    assert isinstance(call, p.CallRequest)
    assert call.args == [1, {"a": None}] and call.kwargs == {"k": 2}


@pytest.mark.parametrize(
    "fields",
    [
        ("spawn_worker", b"s", "m:C", "n", None, {"restart": [True]}),  # a setting is a scalar
        ("spawn_worker", b"s", "m:C", "n", None, '{"restart": true}'),  # not JSON text
        ("call_device", b"s", "dev", "read", "[1]"),
        ("call_device", b"s", "dev", "read", [], ["not", "a", "map"]),
    ],
    ids=["nested-setting", "policy-as-text", "args-as-text", "kwargs-as-list"],
)
def test_ill_typed_values_are_refused_when_decoded(fields: tuple[object, ...]) -> None:
    with pytest.raises(ProtocolError):
        p.decode(_raw_request(*map(str, fields[:1]), *fields[1:]), p.CONTROL_REQUESTS)

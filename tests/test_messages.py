"""Messages: declaration as in the seed, the name registry, and the wire codec."""

from __future__ import annotations

import datetime as dt
from dataclasses import FrozenInstanceError, dataclass

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bussdcc import Event, Message, Severity, message
from bussdcc.errors import DuplicateMessageName, FrameTooLarge, MalformedFrame, ProtocolError, UnknownMessage
from bussdcc.kernel import protocol as p
from bussdcc.kernel._message import message_class


@dataclass(slots=True, frozen=True)
class Reading(Message):
    name = "test.reading"
    severity = Severity.WARNING
    channel: int
    value: float
    tags: list[str]


@dataclass(slots=True, frozen=True)
class Unnamed(Message):
    x: int = 0


def test_declared_like_the_seed() -> None:
    r = Reading(channel=1, value=2.5, tags=["a"])
    assert r.name == "test.reading" and r.severity is Severity.WARNING
    assert r.to_dict() == {"channel": 1, "value": 2.5, "tags": ["a"]}
    with pytest.raises(FrozenInstanceError):
        r.channel = 3  # type: ignore[misc]
    assert message_class("test.reading") is Reading


def test_default_name_is_module_and_qualname() -> None:
    assert Unnamed.name == f"{__name__}.Unnamed"
    assert Unnamed().severity is Severity.INFO
    assert message_class(Unnamed.name) is Unnamed


def test_duplicate_name_is_an_error_at_definition() -> None:
    with pytest.raises(DuplicateMessageName, match=r"test\.reading"):

        @dataclass(slots=True, frozen=True)
        class Clash(Message):
            name = "test.reading"


def test_builtin_messages_follow_the_seed() -> None:
    assert message.ProcessError.severity is Severity.ERROR
    assert message.ServiceFailure.severity is Severity.CRITICAL
    assert message.SystemSignal(signal=0, action="heartbeat").to_dict() == {"signal": 0, "action": "heartbeat"}
    for name in [
        "runtime.booting", "runtime.booted", "runtime.shutting_down", "runtime.shutdown",
        "device.attached", "device.detached", "device.failed", "device.online", "device.offline",
        "process.started", "process.stopped", "process.error",
        "interface.started", "interface.stopped", "interface.error",
        "service.started", "service.stopped", "service.error", "service.restart", "service.failure",
        "system.signal", "system.reload", "event.subscriber_error", "worker.started", "worker.exited",
    ]:  # fmt: skip
        assert message_class(name).name == name


def _roundtrip(msg: Message) -> Message:
    env = p.decode(p.encode_envelope(msg, 1.0, "src"), p.ITEMS)
    assert isinstance(env, p.Envelope)
    return p.envelope_event(env).payload


def test_messages_cross_the_wire_as_their_class() -> None:
    r = Reading(channel=3, value=1.5, tags=["x", "y"])
    assert _roundtrip(r) == r and type(_roundtrip(r)) is Reading


def test_a_message_carrying_an_event_crosses_the_wire() -> None:
    inner = Event(message.SystemSignal(signal=1, action="x"), dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "svc")
    err = message.ProcessError(process="p", error="boom", evt=inner, traceback="tb")
    back = _roundtrip(err)
    assert isinstance(back, message.ProcessError)
    assert back.evt == inner and type(back.evt.payload) is message.SystemSignal


@given(signal=st.integers(-(2**63), 2**63 - 1), action=st.text())
def test_roundtrip_property(signal: int, action: str) -> None:
    msg = message.SystemSignal(signal=signal, action=action)
    assert _roundtrip(msg) == msg


def test_unknown_name_is_a_typed_error() -> None:
    raw = p.encode(p.Envelope("no.such.message", msgspec.Raw(p.encode({})), 0.0))
    env = p.decode(raw, p.ITEMS)
    assert isinstance(env, p.Envelope)
    with pytest.raises(UnknownMessage):
        p.envelope_event(env)


def test_wrong_fields_are_a_typed_error() -> None:
    env = p.Envelope("system.signal", msgspec.Raw(p.encode({"signal": "not-an-int", "action": 1})), 0.0)
    with pytest.raises(MalformedFrame):
        p.envelope_event(env)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\xa1zz\x01", p.encode(p.Stop()), b"\x91\xa3\x00\x00\x80"])
def test_malformed_worker_frames_are_typed_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode(data, p.WORKER_FRAMES)


def test_oversized_frames_are_refused_before_decoding() -> None:
    with pytest.raises(FrameTooLarge):
        p.decode(b"\x00" * (p.MAX_FRAME + 1), p.WORKER_FRAMES)


@example(b"\x91\xa3\x00\x00\x80")  # invalid UTF-8 in a str: msgspec raises UnicodeDecodeError
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        p.decode(data, p.WORKER_FRAMES)
    except ProtocolError:
        pass


def test_unencodable_message_is_a_typed_error() -> None:
    @dataclass(slots=True, frozen=True)
    class Holds(Message):
        name = "test.holds"
        thing: object

    with pytest.raises(MalformedFrame):
        p.encode_envelope(Holds(thing=object()), 0.0)

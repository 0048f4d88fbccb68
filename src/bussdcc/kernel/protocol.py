"""The wire: every frame exchanged between the parent and its workers, and their codec.

Four channels use it, and every name of all four is here (``from bussdcc.kernel import protocol as p``):

* worker → parent over ZeroMQ: :data:`WorkerFrame` (defined here)
* parent → worker over ZeroMQ: :data:`ParentFrame` (defined here)
* parent ↔ fork server over a local socket pair: :data:`ForkRequest` / :data:`ForkReport` (``_fork_wire``)
* control client ↔ parent over the control endpoint: :data:`ControlRequest` / :data:`ControlReply`
  (``_control_wire``)

All frames derive from one base and share one codec (``_frames``).

User messages travel as their registered ``name`` plus the msgspec-encoded
dataclass (``msgspec.Raw``), and are decoded into their class where they land.
Emitted messages and state writes share one ordered, sequence-numbered item
stream per worker incarnation, batched into :class:`Batch` frames.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import msgspec

from ..errors import FrameTooLarge, MalformedFrame
from ._control_wire import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    RECENT,
    CallRequest,
    ControlReply,
    ControlRequest,
    Done,
    Events,
    Failed,
    Joined,
    JoinRequest,
    Origin,
    Policy,
    Refused,
    Reloaded,
    ReloadRequest,
    ScaleRequest,
    ShutdownRequest,
    SpawnRequest,
    StatusReply,
    StatusRequest,
    SubscribeRequest,
    WorkerOp,
    WorkerRequest,
)
from ._event import Event, event_at
from ._fork_wire import (
    FORK_REPORTS,
    FORK_REQUESTS,
    LOG_MARK,
    MAX_LINE,
    ForkReport,
    ForkRequest,
    Output,
    Quit,
    Reaped,
    Spawn,
    Spawned,
    SpawnFailed,
)
from ._frames import (
    ENCODE_ERRORS,
    ENCODER,
    MAX_FRAME,
    VALUES,
    Frame,
    dec_hook,
    decode,
    decode_value,
    encode,
    pack_stream,
    unpack_stream,
)
from ._message import Message, message_class
from ._text import safe_fields

#: A worker flushes a batch once its encoded items reach this many bytes.
BATCH_BYTES: Final = 256 * 1024
#: The environment variable naming the inherited pipe an exec'd worker reads its routing id and token from.
KEY_FD_ENV: Final = "BUSSDCC_KEY_FD"
#: Largest single item (an encoded message or state write); a batch of them stays under MAX_FRAME.
MAX_ITEM: Final = 2 * 1024 * 1024
#: Who a worker runs: a Service (ticks, handles events) or a Device (answers calls).
Role: TypeAlias = Literal["service", "device"]
#: Why a call has no result (each names one :class:`~bussdcc.errors.DeviceCallError`).
FailureKind: TypeAlias = Literal[
    "error", "timeout", "crashed", "unavailable", "unknown_device", "unknown_method", "argument"
]


class Hello(Frame, tag="hello", frozen=True):
    """First frame of every worker incarnation: ``token`` is the secret its parent gave that incarnation."""

    pid: int
    token: bytes


class Ready(Frame, tag="ready", frozen=True):
    """The component connected (device) or started (service); a device's own call endpoint, if it has one."""

    calls: str = ""


class StartFailed(Frame, tag="start_failed", frozen=True):
    """``connect``/``start`` raised; the worker exits after sending this."""

    error: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


class Batch(Frame, tag="batch", frozen=True):
    """Items ``first_seq .. first_seq+len(items)-1`` of this incarnation's stream."""

    first_seq: int
    items: list[msgspec.Raw]


class Bye(Frame, tag="bye", frozen=True):
    """Last frame of a worker: ``last_seq`` items were sent; ``error`` if it gave up."""

    last_seq: int
    error: str | None = None
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


class Failure(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """Why a call has no result: ``kind`` names the error (see :mod:`bussdcc.kernel._calls`)."""

    kind: FailureKind
    message: str
    remote_type: str = ""
    remote_message: str = ""
    traceback: str = ""
    detail: str = ""  # a crash's exit reason, or the state of an unavailable device
    available: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Made of exception text: escaped and bounded wherever it is built or decoded.
        safe_fields(self, "message", "remote_message", "traceback", "detail")


class Call(Frame, tag="call", frozen=True):
    """Parent → device: run ``method(*args, **kwargs)`` (an encoded list and map) and reply."""

    call_id: int
    method: str
    args: msgspec.Raw
    kwargs: msgspec.Raw


class Request(Frame, tag="request", frozen=True):
    """Worker → parent: call ``device.method`` for this worker; the parent routes it and replies."""

    call_id: int
    device: str
    method: str
    args: msgspec.Raw
    kwargs: msgspec.Raw
    timeout: float
    wait: bool = False


class Reply(Frame, tag="reply", frozen=True):
    """The answer to a :class:`Call` (device → parent) or a :class:`Request` (parent → worker)."""

    call_id: int
    result: msgspec.Raw
    failure: Failure | None = None


class Health(Frame, tag="health", frozen=True):
    """The outcome of one ``health()`` call in the worker: ``ok``, else ``reason`` says why not."""

    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


WorkerFrame: TypeAlias = Hello | Ready | StartFailed | Batch | Bye | Request | Reply | Health


class Deliver(Frame, tag="deliver", frozen=True):
    """Events for a Service's ``handle_event``, each an encoded :class:`Envelope`."""

    items: list[msgspec.Raw]


class Stop(Frame, tag="stop", frozen=True):
    """Stop gracefully: run ``stop``/``disconnect``, flush, say :class:`Bye`."""


class ByeAck(Frame, tag="bye_ack", frozen=True):
    """Everything up to the worker's ``Bye.last_seq`` has been dispatched: it may exit."""


class Route(Frame, tag="route", frozen=True):
    """Parent → Service: ``device`` takes calls straight at ``endpoint`` (PLAIN with ``key``) until its line ends."""

    device: str
    line: int
    endpoint: str
    key: bytes


class RouteEnded(Frame, tag="route_ended", frozen=True):
    """Parent → Service: the device incarnation of ``line`` ended (``crashed``, of ``reason``); calls on it fail."""

    device: str
    line: int
    pid: int
    reason: str
    crashed: bool

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


class Go(Frame, tag="go", frozen=True):
    """Parent → a gated worker (forked ahead of its turn at boot): run the component now."""


ParentFrame: TypeAlias = Deliver | Stop | ByeAck | Call | Reply | Route | RouteEnded | Go


class Envelope(Frame, tag="m", frozen=True):
    """One message: its name, encoded body, UNIX time of emission, and source."""

    name: str
    body: msgspec.Raw
    ts: float
    source: str = ""


class StateSet(Frame, tag="s", frozen=True):
    """A worker wrote ``value`` at ``path`` in its state."""

    path: str
    value: msgspec.Raw


class StateDelete(Frame, tag="d", frozen=True):
    """A worker deleted ``path`` in its state."""

    path: str


Item: TypeAlias = Envelope | StateSet | StateDelete


class ItemBatch(Frame, tag="batch", frozen=True):
    """A :class:`Batch` read with its items typed: the whole batch in one decoder call."""

    first_seq: int
    items: list[Item]


#: One decoder per channel, each built once: pass it to :func:`decode`.
WORKER_FRAMES: Final = msgspec.msgpack.Decoder(WorkerFrame)
PARENT_FRAMES: Final = msgspec.msgpack.Decoder(ParentFrame)
ITEMS: Final = msgspec.msgpack.Decoder(Item)
ITEM_BATCH: Final = msgspec.msgpack.Decoder(ItemBatch)
KEYS: Final = msgspec.msgpack.Decoder(tuple[bytes, bytes])
_message_decoders: dict[type[Message], msgspec.msgpack.Decoder[Any]] = {}
# By name, the hot path: a name is bound to one class for good (the registry refuses a second).
BODY_DECODERS: Final[dict[str, msgspec.msgpack.Decoder[Any]]] = {}


_encode: Final = ENCODER.encode

#: The encoding of ``None``: the result of a failed call.
NIL: Final = msgspec.Raw(b"\xc0")


def value_decoder(kind: Any) -> msgspec.msgpack.Decoder[Any]:
    """A decoder for values of type ``kind`` (a call's argument or result); build once, reuse."""
    return msgspec.msgpack.Decoder(kind, dec_hook=dec_hook)


def _item(data: bytes, what: str) -> bytes:
    if len(data) > MAX_ITEM:
        raise FrameTooLarge(f"{what} encodes to {len(data)} bytes, over the {MAX_ITEM}-byte limit")
    return data


def encode_envelope(message: Message, ts: float, source: str = "") -> bytes:
    """Encode ``message`` as an :class:`Envelope` item (raises :class:`FrameTooLarge`).

    One encoder call: the array is exactly the Envelope's (tag, name, body, ts, source).
    """
    try:
        data = _encode(("m", message.name, message, ts, source))
    except ENCODE_ERRORS as exc:
        raise MalformedFrame(f"cannot encode {type(message).__name__}: {exc}") from exc
    if len(data) > MAX_ITEM:
        raise FrameTooLarge(f"{message.name} encodes to {len(data)} bytes, over the {MAX_ITEM}-byte limit")
    return data


_BATCH_HEAD: Final = b"\x93\xa5batch"


def encode_batch(first_seq: int, items: list[bytes]) -> bytes:
    """Encode a :class:`Batch` of encoded items: the bytes of ``encode(Batch(first_seq, items))``, with no Raw each."""
    n = len(items)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 0x10000:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return b"".join((_BATCH_HEAD, _encode(first_seq), head, *items))


def encode_state_set(path: str, value: Any) -> bytes:
    """Encode a state write as a :class:`StateSet` item (raises :class:`FrameTooLarge`)."""
    return _item(encode(StateSet(path, msgspec.Raw(encode(value)))), f"state {path!r}")


def decode_message(name: str, body: bytes | memoryview) -> Message:
    """Decode the body of the message registered under ``name`` into its class."""
    decoder = BODY_DECODERS.get(name)
    if decoder is None:
        cls = message_class(name)
        decoder = _message_decoders.get(cls)
        if decoder is None:
            decoder = _message_decoders[cls] = msgspec.msgpack.Decoder(cls, dec_hook=dec_hook)
        BODY_DECODERS[name] = decoder
    try:
        msg: Message = decoder.decode(body)
    except (msgspec.DecodeError, ValueError) as exc:
        raise MalformedFrame(f"{name}: {exc}") from None
    return msg


def envelope_event(env: Envelope, source: str | None = None) -> Event[Message]:
    """Turn a decoded envelope into the Event it carries."""
    return event_at(decode_message(env.name, env.body), env.ts, source if source is not None else env.source)


def encode_key(identity: bytes, token: bytes) -> bytes:
    """What an exec'd worker reads from its key pipe: its routing id and its token."""
    return encode((identity, token))


def decode_key(data: bytes) -> tuple[bytes, bytes]:
    """The ``(identity, token)`` of :func:`encode_key` (raises :class:`ProtocolError`)."""
    return decode(data, KEYS)


__all__ = [
    "BATCH_BYTES",
    "BODY_DECODERS",
    "CONTROL_REPLIES",
    "CONTROL_REQUESTS",
    "FORK_REPORTS",
    "FORK_REQUESTS",
    "ITEMS",
    "ITEM_BATCH",
    "KEYS",
    "KEY_FD_ENV",
    "LOG_MARK",
    "MAX_FRAME",
    "MAX_ITEM",
    "MAX_LINE",
    "NIL",
    "PARENT_FRAMES",
    "RECENT",
    "VALUES",
    "WORKER_FRAMES",
    "Batch",
    "Bye",
    "ByeAck",
    "Call",
    "CallRequest",
    "ControlReply",
    "ControlRequest",
    "Deliver",
    "Done",
    "Envelope",
    "Events",
    "Failed",
    "Failure",
    "FailureKind",
    "ForkReport",
    "ForkRequest",
    "Frame",
    "Go",
    "Health",
    "Hello",
    "Item",
    "ItemBatch",
    "JoinRequest",
    "Joined",
    "Origin",
    "Output",
    "ParentFrame",
    "Policy",
    "Quit",
    "Ready",
    "Reaped",
    "Refused",
    "ReloadRequest",
    "Reloaded",
    "Reply",
    "Request",
    "Role",
    "ScaleRequest",
    "ShutdownRequest",
    "Spawn",
    "SpawnFailed",
    "SpawnRequest",
    "Spawned",
    "StartFailed",
    "StateDelete",
    "StateSet",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "SubscribeRequest",
    "WorkerFrame",
    "WorkerOp",
    "WorkerRequest",
    "decode",
    "decode_key",
    "decode_message",
    "decode_value",
    "encode",
    "encode_batch",
    "encode_envelope",
    "encode_key",
    "encode_state_set",
    "envelope_event",
    "pack_stream",
    "unpack_stream",
    "value_decoder",
]

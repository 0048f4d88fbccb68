"""The wire: every frame exchanged between the parent and its workers, and their codec.

Three channels use it:

* worker → parent over ZeroMQ: :data:`WorkerFrame`
* parent → worker over ZeroMQ: :data:`ParentFrame`
* parent ↔ fork server over a local socket pair: :data:`ForkRequest` / :data:`ForkReport`
* control client ↔ parent over the control endpoint: :data:`ControlRequest` / :data:`ControlReply`

User messages travel as their registered ``name`` plus the msgspec-encoded
dataclass (``msgspec.Raw``), and are decoded into their class where they land.
Emitted messages and state writes share one ordered, sequence-numbered item
stream per worker incarnation, batched into :class:`Batch` frames.
"""

from __future__ import annotations

import datetime as _dt
import struct
from typing import Any, Final, Literal, TypeAlias, TypeVar

import msgspec

from ..errors import FrameTooLarge, MalformedFrame
from ._event import Event
from ._message import Message, message_class
from ._text import safe_fields

#: Largest frame either side accepts (and the parent's ZMQ_MAXMSGSIZE).
MAX_FRAME: Final = 16 * 1024 * 1024
#: A worker flushes a batch once its encoded items reach this many bytes.
BATCH_BYTES: Final = 256 * 1024
#: The environment variable naming the inherited pipe an exec'd worker reads its routing id and token from.
KEY_FD_ENV: Final = "BUSSDCC_KEY_FD"
#: Recent dispatched messages the runtime keeps for a subscriber's backlog (``bussdcc events``).
RECENT: Final = 1000
#: Largest single item (an encoded message or state write); a batch of them stays under MAX_FRAME.
MAX_ITEM: Final = 2 * 1024 * 1024


#: Who a worker runs: a Service (ticks, handles events) or a Device (answers calls).
Role: TypeAlias = Literal["service", "device"]
#: Why a call has no result (each names one :class:`~bussdcc.errors.DeviceCallError`).
FailureKind: TypeAlias = Literal[
    "error", "timeout", "crashed", "unavailable", "unknown_device", "unknown_method", "argument"
]
#: What a control client may do to one worker.
WorkerOp: TypeAlias = Literal["start", "stop", "restart", "remove"]
#: Supervision settings as sent over the wire (``restart``, ``max_restarts``, ...): scalars only.
Policy: TypeAlias = dict[str, float | int | str | bool | None]


class _Frame(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, tag_field="k"):
    pass


# ---- worker → parent ----------------------------------------------------------


class Hello(_Frame, tag="hello", frozen=True):
    """First frame of every worker incarnation: ``token`` is the secret its parent gave that incarnation."""

    pid: int
    token: bytes


class Ready(_Frame, tag="ready", frozen=True):
    """The component connected (device) or started (service)."""


class StartFailed(_Frame, tag="start_failed", frozen=True):
    """``connect``/``start`` raised; the worker exits after sending this."""

    error: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


class Batch(_Frame, tag="batch", frozen=True):
    """Items ``first_seq .. first_seq+len(items)-1`` of this incarnation's stream."""

    first_seq: int
    items: list[msgspec.Raw]


class Bye(_Frame, tag="bye", frozen=True):
    """Last frame of a worker: ``last_seq`` items were sent; ``error`` if it gave up."""

    last_seq: int
    error: str | None = None
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


# ---- calls to devices (both directions) ---------------------------------------------


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


class Call(_Frame, tag="call", frozen=True):
    """Parent → device: run ``method(*args, **kwargs)`` (an encoded list and map) and reply."""

    call_id: int
    method: str
    args: msgspec.Raw
    kwargs: msgspec.Raw


class Request(_Frame, tag="request", frozen=True):
    """Worker → parent: call ``device.method`` for this worker; the parent routes it and replies."""

    call_id: int
    device: str
    method: str
    args: msgspec.Raw
    kwargs: msgspec.Raw
    timeout: float
    wait: bool = False


class Reply(_Frame, tag="reply", frozen=True):
    """The answer to a :class:`Call` (device → parent) or a :class:`Request` (parent → worker)."""

    call_id: int
    result: msgspec.Raw
    failure: Failure | None = None


WorkerFrame: TypeAlias = Hello | Ready | StartFailed | Batch | Bye | Request | Reply

# ---- parent → worker ----------------------------------------------------------


class Deliver(_Frame, tag="deliver", frozen=True):
    """Events for a Service's ``handle_event``, each an encoded :class:`Envelope`."""

    items: list[msgspec.Raw]


class Stop(_Frame, tag="stop", frozen=True):
    """Stop gracefully: run ``stop``/``disconnect``, flush, say :class:`Bye`."""


class ByeAck(_Frame, tag="bye_ack", frozen=True):
    """Everything up to the worker's ``Bye.last_seq`` has been dispatched: it may exit."""


ParentFrame: TypeAlias = Deliver | Stop | ByeAck | Call | Reply

# ---- items of the stream ----------------------------------------------------------


class Envelope(_Frame, tag="m", frozen=True):
    """One message: its name, encoded body, UNIX time of emission, and source."""

    name: str
    body: msgspec.Raw
    ts: float
    source: str = ""


class StateSet(_Frame, tag="s", frozen=True):
    """A worker wrote ``value`` at ``path`` in its state."""

    path: str
    value: msgspec.Raw


class StateDelete(_Frame, tag="d", frozen=True):
    """A worker deleted ``path`` in its state."""

    path: str


Item: TypeAlias = Envelope | StateSet | StateDelete

# ---- parent ↔ fork server -----------------------------------------------------


class Spawn(_Frame, tag="spawn", frozen=True):
    """Fork a worker for the component ``worker`` (``pickled`` if registered after boot)."""

    worker: str
    incarnation: int
    slot: int
    pickled: bytes | None = None
    #: Exec this command instead (a worker in a fresh interpreter); slot and incarnation are appended.
    argv: list[str] | None = None
    #: The incarnation's routing id and secret (never on argv: an exec'd worker reads them from a pipe).
    identity: bytes = b""
    token: bytes = b""


class Quit(_Frame, tag="quit", frozen=True):
    """The fork server should exit."""


class Spawned(_Frame, tag="spawned", frozen=True):
    """A worker process exists."""

    worker: str
    incarnation: int
    pid: int


class SpawnFailed(_Frame, tag="spawn_failed", frozen=True):
    """The fork server could not create the worker.

    ``errno`` is set when the environment refused (``fork``, ``pipe2`` or ``pidfd_open``
    failed: a limit, which may lift); None when the request itself cannot be served
    (a component the fork server cannot unpickle or import), which no retry fixes.
    """

    worker: str
    incarnation: int
    error: str
    errno: int | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error")


class Reaped(_Frame, tag="reaped", frozen=True):
    """A worker ended; ``exit_code`` as :func:`os.waitstatus_to_exitcode` (negative: signal)."""

    pid: int
    exit_code: int


class Output(_Frame, tag="output", frozen=True):
    """Whole lines a worker wrote to its stdout (``stream`` 1) or stderr (2)."""

    worker: str
    pid: int
    stream: int
    lines: list[str]


#: A worker's stderr line that carries a ``logging`` record (JSON follows) rather than text.
LOG_MARK: Final = "\x1ebussdcc-log "
#: Longest line forwarded whole; longer ones are split.
MAX_LINE: Final = 64 * 1024

ForkRequest: TypeAlias = Spawn | Quit
ForkReport: TypeAlias = Spawned | SpawnFailed | Reaped | Output

# ---- control client → parent (every request carries the runtime's secret) ------------


class StatusRequest(_Frame, tag="status", frozen=True):
    """Ask for the runtime's and every worker's status."""

    secret: bytes


class WorkerRequest(_Frame, tag="worker", frozen=True):
    """Act on one worker: ``op`` is ``start``, ``stop``, ``restart`` or ``remove``."""

    secret: bytes
    op: WorkerOp
    worker: str


class ShutdownRequest(_Frame, tag="shutdown", frozen=True):
    """Shut the runtime down."""

    secret: bytes
    reason: str | None = None


class SpawnRequest(_Frame, tag="spawn_worker", frozen=True):
    """Add a Service or Device ``target`` (``module:Class``) as a new worker run in a fresh interpreter."""

    secret: bytes
    target: str
    name: str
    #: A Device's config, or a Service's constructor arguments (a map): any msgpack value.
    config: Any = None
    policy: Policy = msgspec.field(default_factory=dict)


class SubscribeRequest(_Frame, tag="subscribe", frozen=True):
    """Send the last ``backlog`` dispatched messages, then :class:`Done`, then every new one (as :class:`EventOut`)."""

    secret: bytes
    backlog: int = 0


class JoinRequest(_Frame, tag="join", frozen=True):
    """A standalone worker process ``pid`` asks to be supervised as ``name``."""

    secret: bytes
    target: str
    name: str
    pid: int
    config: Any = None
    policy: Policy = msgspec.field(default_factory=dict)


class CallRequest(_Frame, tag="call_device", frozen=True):
    """Call the public method ``method`` of the device ``device`` with ``args`` and ``kwargs``.

    Answered by :class:`Done` whose ``outcome`` is the result as JSON, or by :class:`Failed`.
    """

    secret: bytes
    device: str
    method: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float = 10.0


ControlRequest: TypeAlias = (
    StatusRequest | WorkerRequest | ShutdownRequest | SpawnRequest | SubscribeRequest | JoinRequest | CallRequest
)

# ---- parent → control client ---------------------------------------------------


class Refused(_Frame, tag="refused", frozen=True):
    """The request was not acted on (no or wrong secret, malformed request); nothing changed."""

    reason: str

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


class Failed(_Frame, tag="failed", frozen=True):
    """The request was understood but could not be carried out (unknown worker, bad target, ...)."""

    error: str

    def __post_init__(self) -> None:
        safe_fields(self, "error")


class Done(_Frame, tag="done", frozen=True):
    """The request was carried out; ``outcome`` says how it ended."""

    outcome: str


class StatusReply(_Frame, tag="status_reply", frozen=True):
    """The runtime (name, pid, uptime, counters) and one entry per worker (``WorkerStatus`` fields)."""

    runtime: dict[str, Any]
    workers: list[dict[str, Any]]


class Joined(_Frame, tag="joined", frozen=True):
    """A standalone worker may connect: its incarnation, counter slot, endpoint, the parent's pid,
    and the routing id and secret its ``Hello`` must carry."""

    incarnation: int
    slot: int
    endpoint: str
    parent_pid: int
    identity: bytes = b""
    token: bytes = b""


class Events(_Frame, tag="events", frozen=True):
    """Dispatched messages for a subscriber, in order (encoded Envelopes and their severities).

    ``dropped`` counts the messages it missed (it read too slowly) just before these.
    """

    dropped: int
    severities: list[int]
    items: list[msgspec.Raw]


ControlReply: TypeAlias = Refused | Failed | Done | StatusReply | Joined | Events

# ---- codec ----------------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Event):
        return {"name": obj.payload.name, "payload": obj.payload, "time": obj.time, "source": obj.source}
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(kind: type, obj: Any) -> Any:
    if getattr(kind, "__origin__", kind) is Event and isinstance(obj, dict):
        try:
            payload = msgspec.convert(obj["payload"], message_class(obj["name"]), dec_hook=_dec_hook)
            return Event(payload, obj["time"], obj["source"])
        except (KeyError, TypeError) as exc:
            raise msgspec.ValidationError(f"malformed event: {exc}") from None
    raise NotImplementedError(f"cannot decode {kind!r}")


_T = TypeVar("_T")

_encoder: Final = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
#: One decoder per channel, each built once: pass it to :func:`decode`.
WORKER_FRAMES: Final = msgspec.msgpack.Decoder(WorkerFrame)
PARENT_FRAMES: Final = msgspec.msgpack.Decoder(ParentFrame)
ITEMS: Final = msgspec.msgpack.Decoder(Item)
FORK_REQUESTS: Final = msgspec.msgpack.Decoder(ForkRequest)
FORK_REPORTS: Final = msgspec.msgpack.Decoder(ForkReport)
CONTROL_REQUESTS: Final = msgspec.msgpack.Decoder(ControlRequest)
CONTROL_REPLIES: Final = msgspec.msgpack.Decoder(ControlReply)
VALUES: Final = msgspec.msgpack.Decoder()
KEYS: Final = msgspec.msgpack.Decoder(tuple[bytes, bytes])
_message_decoders: dict[type[Message], msgspec.msgpack.Decoder[Any]] = {}

_LEN: Final = struct.Struct("!I")


def encode(obj: Any) -> bytes:
    """Encode a frame, an item, a message or a plain value."""
    try:
        return _encoder.encode(obj)
    # ValueError: text with a lone surrogate (UnicodeEncodeError); OverflowError: an int over 64 bits.
    except (TypeError, ValueError, OverflowError, RecursionError, NotImplementedError, msgspec.EncodeError) as exc:
        raise MalformedFrame(f"cannot encode {type(obj).__name__}: {exc}") from exc


def decode(data: bytes | memoryview, decoder: msgspec.msgpack.Decoder[_T]) -> _T:
    """Decode ``data`` with one of the channel decoders above (raises :class:`ProtocolError`).

    Every channel goes through here: a frame over :data:`MAX_FRAME` is refused unread,
    and any malformed one is a :class:`MalformedFrame`, never a crash.
    """
    if len(data) > MAX_FRAME:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # invalid UTF-8 surfaces as UnicodeDecodeError
        raise MalformedFrame(str(exc)) from None


# The channels' own names for decode(), kept for their many callers.


def decode_worker_frame(data: bytes | memoryview) -> WorkerFrame:
    """Decode a frame sent by a worker."""
    return decode(data, WORKER_FRAMES)


def decode_parent_frame(data: bytes | memoryview) -> ParentFrame:
    """Decode a frame sent by the parent."""
    return decode(data, PARENT_FRAMES)


def decode_item(data: bytes | memoryview) -> Item:
    """Decode one item of a stream."""
    return decode(data, ITEMS)


def decode_fork_request(data: bytes) -> ForkRequest:
    """Decode a request to the fork server."""
    return decode(data, FORK_REQUESTS)


def decode_fork_report(data: bytes) -> ForkReport:
    """Decode a report from the fork server."""
    return decode(data, FORK_REPORTS)


def decode_control_request(data: bytes | memoryview) -> ControlRequest:
    """Decode a request sent to the control endpoint."""
    return decode(data, CONTROL_REQUESTS)


def decode_control_reply(data: bytes | memoryview) -> ControlReply:
    """Decode a reply from the control endpoint."""
    return decode(data, CONTROL_REPLIES)


def decode_value(data: bytes | memoryview) -> Any:
    """Decode a plain value (state writes)."""
    return decode(data, VALUES)


#: The encoding of ``None``: the result of a failed call.
NIL: Final = msgspec.Raw(b"\xc0")


def value_decoder(kind: Any) -> msgspec.msgpack.Decoder[Any]:
    """A decoder for values of type ``kind`` (a call's argument or result); build once, reuse."""
    return msgspec.msgpack.Decoder(kind, dec_hook=_dec_hook)


def _item(data: bytes, what: str) -> bytes:
    if len(data) > MAX_ITEM:
        raise FrameTooLarge(f"{what} encodes to {len(data)} bytes, over the {MAX_ITEM}-byte limit")
    return data


def encode_envelope(message: Message, ts: float, source: str = "") -> bytes:
    """Encode ``message`` as an :class:`Envelope` item (raises :class:`FrameTooLarge`)."""
    return _item(encode(Envelope(message.name, msgspec.Raw(encode(message)), ts, source)), message.name)


def encode_state_set(path: str, value: Any) -> bytes:
    """Encode a state write as a :class:`StateSet` item (raises :class:`FrameTooLarge`)."""
    return _item(encode(StateSet(path, msgspec.Raw(encode(value)))), f"state {path!r}")


def decode_message(name: str, body: bytes | memoryview) -> Message:
    """Decode the body of the message registered under ``name`` into its class."""
    cls = message_class(name)
    decoder = _message_decoders.get(cls)
    if decoder is None:
        decoder = _message_decoders[cls] = msgspec.msgpack.Decoder(cls, dec_hook=_dec_hook)
    try:
        msg: Message = decoder.decode(body)
    except (msgspec.DecodeError, ValueError) as exc:
        raise MalformedFrame(f"{name}: {exc}") from None
    return msg


def envelope_event(env: Envelope, source: str | None = None) -> Event[Message]:
    """Turn a decoded envelope into the Event it carries."""
    ts = _dt.datetime.fromtimestamp(env.ts, tz=_dt.UTC)
    return Event(decode_message(env.name, env.body), ts, source if source is not None else env.source)


def encode_key(identity: bytes, token: bytes) -> bytes:
    """What an exec'd worker reads from its key pipe: its routing id and its token."""
    return encode((identity, token))


def decode_key(data: bytes) -> tuple[bytes, bytes]:
    """The ``(identity, token)`` of :func:`encode_key` (raises :class:`ProtocolError`)."""
    return decode(data, KEYS)


# ---- length-prefixed framing for the fork server's stream socket ---------------


def pack_stream(frame: _Frame) -> bytes:
    """Frame ``frame`` for a stream socket: 4-byte big-endian length, then the encoding."""
    body = encode(frame)
    return _LEN.pack(len(body)) + body


def unpack_stream(buffer: bytearray) -> list[bytes]:
    """Take every complete frame off the front of ``buffer``."""
    out: list[bytes] = []
    while len(buffer) >= _LEN.size:
        (size,) = _LEN.unpack_from(buffer)
        if size > MAX_FRAME:
            raise FrameTooLarge(f"stream frame of {size} bytes exceeds the limit")
        end = _LEN.size + size
        if len(buffer) < end:
            break
        out.append(bytes(buffer[_LEN.size : end]))
        del buffer[:end]
    return out

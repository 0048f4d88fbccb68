"""Frames and their codec: the base every frame of every channel derives from, encoding, decoding.

Every frame is a frozen, tagged msgspec Struct encoded as a msgpack array; one
encoder serves every channel, and :func:`decode` is the one way in (a size check,
then the channel's own decoder, every failure a :class:`~bussdcc.errors.ProtocolError`).
"""

from __future__ import annotations

import struct
from typing import Any, Final, TypeVar

import msgspec

from ..errors import FrameTooLarge, MalformedFrame
from ._event import Event
from ._message import message_class

#: Largest frame either side accepts (and the parent's ZMQ_MAXMSGSIZE).
MAX_FRAME: Final = 16 * 1024 * 1024


class Frame(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, tag_field="k"):
    """The base of every frame: frozen, tagged by its kind (``k``), encoded as an array."""


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Event):
        return {"name": obj.payload.name, "payload": obj.payload, "time": obj.time, "source": obj.source}
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def dec_hook(kind: type, obj: Any) -> Any:
    if getattr(kind, "__origin__", kind) is Event and isinstance(obj, dict):
        try:
            payload = msgspec.convert(obj["payload"], message_class(obj["name"]), dec_hook=dec_hook)
            return Event(payload, obj["time"], obj["source"])
        except (KeyError, TypeError) as exc:
            raise msgspec.ValidationError(f"malformed event: {exc}") from None
    raise NotImplementedError(f"cannot decode {kind!r}")


_T = TypeVar("_T")
ENCODER: Final = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
VALUES: Final = msgspec.msgpack.Decoder()
_LEN: Final = struct.Struct("!I")
# ValueError: text with a lone surrogate (UnicodeEncodeError); OverflowError: an int over 64 bits.
ENCODE_ERRORS: Final = (
    TypeError,
    ValueError,
    OverflowError,
    RecursionError,
    NotImplementedError,
    msgspec.EncodeError,
)


def encode(obj: Any) -> bytes:
    """Encode a frame, an item, a message or a plain value."""
    try:
        return ENCODER.encode(obj)
    except ENCODE_ERRORS as exc:
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


def decode_value(data: bytes | memoryview) -> Any:
    """Decode a plain value (state writes)."""
    return decode(data, VALUES)


def pack_stream(frame: Frame) -> bytes:
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

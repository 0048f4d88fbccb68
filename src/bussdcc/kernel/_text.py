"""Text that can always be sent: exception messages and tracebacks are arbitrary.

An exception's text may hold lone surrogates (``os.fsdecode`` of a path that is
not UTF-8), which no UTF-8 encoder accepts, or be megabytes long. Whatever
reports an error passes its text through :func:`safe_text` first, so that the
report itself can never fail to encode, nor outgrow a frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

import msgspec

from ..errors import ProtocolError

__all__ = ["MAX_TEXT", "emit_report", "safe_fields", "safe_text"]

#: Longest text (in characters) an error report carries in one field: at most 4 bytes each in
#: UTF-8, so a report's few fields stay far below the item limit (``protocol.MAX_ITEM``).
MAX_TEXT: Final = 64 * 1024
_MARK: Final = "... [truncated {} chars]"
_SMALLEST: Final = 64


def _escape(text: str) -> str:
    # Only what UTF-8 refuses (lone surrogates) is escaped, as ``\udcff``; the rest is kept.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` made encodable (lone surrogates escaped) and at most ``limit`` characters (cut, marked).

    Text that is safe already is returned as it is, so applying this twice changes nothing.
    """
    if limit < _SMALLEST:
        raise ValueError(f"limit must be at least {_SMALLEST}, not {limit}")
    if len(text) <= limit:
        if _encodable(text):
            return text
        escaped = _escape(text)
        if len(escaped) <= limit:
            return escaped
    keep = limit - len(_MARK.format(len(text)))
    head = text[:keep]
    escaped = _escape(head)
    if len(escaped) > keep:
        # Each character dropped shortens the escaped text by at least one: one cut suffices.
        head = head[: len(head) - (len(escaped) - keep)]
        escaped = _escape(head)
    return escaped + _MARK.format(len(text) - len(head))


def safe_fields(obj: Any, *names: str) -> None:
    """Make the text fields ``names`` of a frozen dataclass or struct safe, in place (from ``__post_init__``)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            safe = safe_text(value)
            if safe is value:
                continue
            if isinstance(obj, msgspec.Struct):
                msgspec.structs.force_setattr(obj, name, safe)
            else:
                object.__setattr__(obj, name, safe)


def emit_report(emit: Callable[[Any], None], report: Any) -> None:
    """Emit an error report (a message with an ``evt`` field); if it is too large with that event, without it."""
    try:
        emit(report)
    except ProtocolError:
        evt = getattr(report, "evt", None)
        if evt is None:
            raise
        # The event was sendable on its own, the report's text is bounded: only both together are too much.
        error = f"{report.error} (while handling {evt.payload.name}, too large to include)"
        emit(dataclasses.replace(report, evt=None, error=error))

"""The parent ↔ fork server channel: spawn requests, and reports of what was spawned, reaped and printed.

It runs over a local socket pair as length-prefixed frames (:func:`~._frames.pack_stream`).
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec

from ._frames import Frame
from ._text import safe_fields


class Spawn(Frame, tag="spawn", frozen=True):
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
    #: Set up, say hello, then wait for the parent's Go before running the component (boot).
    gated: bool = False


class Quit(Frame, tag="quit", frozen=True):
    """The fork server should exit."""


class Spawned(Frame, tag="spawned", frozen=True):
    """A worker process exists."""

    worker: str
    incarnation: int
    pid: int


class SpawnFailed(Frame, tag="spawn_failed", frozen=True):
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


class Reaped(Frame, tag="reaped", frozen=True):
    """A worker ended; ``exit_code`` as :func:`os.waitstatus_to_exitcode` (negative: signal)."""

    pid: int
    exit_code: int


class Output(Frame, tag="output", frozen=True):
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
FORK_REQUESTS: Final = msgspec.msgpack.Decoder(ForkRequest)
FORK_REPORTS: Final = msgspec.msgpack.Decoder(ForkReport)

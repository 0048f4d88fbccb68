"""The control channel: what a ``bussdcc`` client asks a live runtime, and the answers.

Every request carries the runtime's secret; values travel as msgspec values, never as JSON text.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import msgspec

from ._builtin import ReloadPlan
from ._frames import Frame
from ._text import safe_fields

#: Recent dispatched messages the runtime keeps for a subscriber's backlog (``bussdcc events``).
RECENT: Final = 1000
#: What a control client may do to one worker.
WorkerOp: TypeAlias = Literal["start", "stop", "restart", "remove"]
#: Supervision settings as sent over the wire (``restart``, ``max_restarts``, ...): scalars only.
Policy: TypeAlias = dict[str, float | int | str | bool | None]


#: Where a streamed message came from: dispatch time in ns, the worker's incarnation and sequence number.
Origin: TypeAlias = tuple[int, int, int]


class StatusRequest(Frame, tag="status", frozen=True):
    """Ask for the runtime's and every worker's status."""

    secret: bytes


class WorkerRequest(Frame, tag="worker", frozen=True):
    """Act on one worker: ``op`` is ``start``, ``stop``, ``restart`` or ``remove``."""

    secret: bytes
    op: WorkerOp
    worker: str


class ShutdownRequest(Frame, tag="shutdown", frozen=True):
    """Shut the runtime down."""

    secret: bytes
    reason: str | None = None


class SpawnRequest(Frame, tag="spawn_worker", frozen=True):
    """Add a Service or Device ``target`` (``module:Class``) as a new worker run in a fresh interpreter."""

    secret: bytes
    target: str
    name: str
    #: A Device's config, or a Service's constructor arguments (a map): any msgpack value.
    config: Any = None
    policy: Policy = msgspec.field(default_factory=dict)


class SubscribeRequest(Frame, tag="subscribe", frozen=True):
    """Send the last ``backlog`` dispatched messages, then :class:`Done`, then every new one (as :class:`EventOut`)."""

    secret: bytes
    backlog: int = 0


class JoinRequest(Frame, tag="join", frozen=True):
    """A standalone worker process ``pid`` asks to be supervised as ``name``."""

    secret: bytes
    target: str
    name: str
    pid: int
    config: Any = None
    policy: Policy = msgspec.field(default_factory=dict)


class CallRequest(Frame, tag="call_device", frozen=True):
    """Call the public method ``method`` of the device ``device`` with ``args`` and ``kwargs``.

    Answered by :class:`Done` whose ``outcome`` is the result as JSON, or by :class:`Failed`.
    """

    secret: bytes
    device: str
    method: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: float = 10.0


class ScaleRequest(Frame, tag="scale", frozen=True):
    """Make the pool ``pool`` ``instances`` strong (start the next members, or remove the last ones)."""

    secret: bytes
    pool: str
    instances: int


class ReloadRequest(Frame, tag="reload", frozen=True):
    """Re-read the runtime's system file and apply it (``dry_run``: only say what it would change)."""

    secret: bytes
    dry_run: bool = False


ControlRequest: TypeAlias = (
    StatusRequest
    | WorkerRequest
    | ShutdownRequest
    | SpawnRequest
    | SubscribeRequest
    | JoinRequest
    | CallRequest
    | ScaleRequest
    | ReloadRequest
)


class Refused(Frame, tag="refused", frozen=True):
    """The request was not acted on (no or wrong secret, malformed request); nothing changed."""

    reason: str

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


class Failed(Frame, tag="failed", frozen=True):
    """The request was understood but could not be carried out (unknown worker, bad target, ...)."""

    error: str

    def __post_init__(self) -> None:
        safe_fields(self, "error")


class Done(Frame, tag="done", frozen=True):
    """The request was carried out; ``outcome`` says how it ended."""

    outcome: str


class StatusReply(Frame, tag="status_reply", frozen=True):
    """The runtime (name, pid, uptime, counters) and one entry per worker (``WorkerStatus`` fields)."""

    runtime: dict[str, Any]
    workers: list[dict[str, Any]]


class Joined(Frame, tag="joined", frozen=True):
    """A standalone worker may connect: its incarnation, counter slot, endpoint, the parent's pid,
    and the routing id and secret its ``Hello`` must carry."""

    incarnation: int
    slot: int
    endpoint: str
    parent_pid: int
    identity: bytes = b""
    token: bytes = b""


class Events(Frame, tag="events", frozen=True):
    """Dispatched messages for a subscriber, in order (encoded Envelopes and their severities).

    ``dropped`` counts the messages it missed (it read too slowly) just before these.
    """

    dropped: int
    severities: list[int]
    items: list[msgspec.Raw]
    #: Per item: its dispatch time (ns since the epoch) and, for a worker's message, the worker's
    #: incarnation and the message's sequence number (0, 0 otherwise).
    origins: list[Origin] = msgspec.field(default_factory=list)


class Reloaded(Frame, tag="reloaded", frozen=True):
    """What a reload changed (or, with ``dry_run``, would change): the plan, each name's kind, and notes."""

    source: str
    plan: ReloadPlan
    #: ``device``, ``service``, ``pool``, ``group``, ``process`` or ``interface`` for each name of the plan.
    kinds: dict[str, str]
    dry_run: bool = False
    notes: list[str] = msgspec.field(default_factory=list)


ControlReply: TypeAlias = Refused | Failed | Done | StatusReply | Joined | Events | Reloaded
CONTROL_REQUESTS: Final = msgspec.msgpack.Decoder(ControlRequest)
CONTROL_REPLIES: Final = msgspec.msgpack.Decoder(ControlReply)

"""The messages the kernel itself emits.

The text of every error report (exception text, tracebacks, reasons) is made safe
where the report is built and where it is decoded: lone surrogates escaped, length
bounded (:func:`~bussdcc.kernel._text.safe_text`), so a report can always be sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._event import Event
from ._message import Message, Severity
from ._text import safe_fields
from ._vocab import ExitCause, Role

# ---- runtime lifecycle ----------------------------------------------------


@dataclass(slots=True, frozen=True)
class RuntimeBooting(Message):
    """The runtime started booting."""

    name = "runtime.booting"
    version: str


@dataclass(slots=True, frozen=True)
class RuntimeBooted(Message):
    """Devices, processes and interfaces are up; services start next."""

    name = "runtime.booted"
    version: str


@dataclass(slots=True, frozen=True)
class RuntimeShuttingDown(Message):
    """The runtime started shutting down."""

    name = "runtime.shutting_down"
    reason: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


@dataclass(slots=True, frozen=True)
class RuntimeShutdown(Message):
    """Every component is stopped; the runtime is down."""

    name = "runtime.shutdown"
    reason: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


@dataclass(slots=True, frozen=True)
class RuntimeFault(Message):
    """The supervisor's own machinery met a fault of its environment, and carries on.

    ``part`` names the machinery (``watchdog``, ``fork_server``, ``control``, ``fds``,
    ``run_dir``, ``threads``, ...); ``kind`` says what happened in one word.
    """

    name = "runtime.fault"
    severity = Severity.ERROR
    part: str
    kind: str
    error: str

    def __post_init__(self) -> None:
        safe_fields(self, "error")


# ---- devices ----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class DeviceAttached(Message):
    """A device's worker connected it."""

    name = "device.attached"
    device: str
    kind: str


@dataclass(slots=True, frozen=True)
class DeviceDetached(Message):
    """A device was disconnected and its worker ended."""

    name = "device.detached"
    device: str
    kind: str


@dataclass(slots=True, frozen=True)
class DeviceOnline(Message):
    """A device reports it is reachable."""

    name = "device.online"
    device: str
    kind: str


@dataclass(slots=True, frozen=True)
class DeviceOffline(Message):
    """A device reports it is not reachable."""

    name = "device.offline"
    device: str
    kind: str


@dataclass(slots=True, frozen=True)
class DeviceFailed(Message):
    """A device failed to connect or disconnect, or its worker died."""

    name = "device.failed"
    severity = Severity.ERROR
    device: str
    kind: str
    error: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


# ---- processes and interfaces ---------------------------------------------


@dataclass(slots=True, frozen=True)
class ProcessStarted(Message):
    """A process attached and started."""

    name = "process.started"
    process: str


@dataclass(slots=True, frozen=True)
class ProcessStopped(Message):
    """A process stopped and detached."""

    name = "process.stopped"
    process: str


@dataclass(slots=True, frozen=True)
class ProcessError(Message):
    """A process raised; ``evt`` is the event it was handling, if any."""

    name = "process.error"
    severity = Severity.ERROR
    process: str
    error: str
    evt: Event[Message] | None = None
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


@dataclass(slots=True, frozen=True)
class InterfaceStarted(Message):
    """An interface attached and started."""

    name = "interface.started"
    interface: str


@dataclass(slots=True, frozen=True)
class InterfaceStopped(Message):
    """An interface stopped and detached."""

    name = "interface.stopped"
    interface: str


@dataclass(slots=True, frozen=True)
class InterfaceError(Message):
    """An interface raised; ``evt`` is the event it was handling, if any."""

    name = "interface.error"
    severity = Severity.ERROR
    interface: str
    error: str
    evt: Event[Message] | None = None
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


# ---- services ---------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ServiceStarted(Message):
    """A service's worker ran ``start`` and begins ticking."""

    name = "service.started"
    service: str


@dataclass(slots=True, frozen=True)
class ServiceStopped(Message):
    """A service ran ``stop`` and its worker ended."""

    name = "service.stopped"
    service: str


@dataclass(slots=True, frozen=True)
class ServiceError(Message):
    """A service raised in ``tick``/``handle_event``, or its worker died."""

    name = "service.error"
    severity = Severity.ERROR
    service: str
    error: str
    evt: Event[Message] | None = None
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


@dataclass(slots=True, frozen=True)
class ServiceRestart(Message):
    """A service is being started again in a new worker process."""

    name = "service.restart"
    service: str


@dataclass(slots=True, frozen=True)
class ServiceFailure(Message):
    """A service stopped for good because of an error."""

    name = "service.failure"
    severity = Severity.CRITICAL
    service: str
    error: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error", "traceback")


# ---- system -------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class SystemSignal(Message):
    """A signal or user action, as a typed message."""

    name = "system.signal"
    signal: int
    action: str


@dataclass(slots=True, frozen=True)
class ReloadPlan:
    """What a reload of a system file changes: component names by outcome.

    ``added`` start, ``removed`` stop, ``changed`` restart with their new
    settings, ``unchanged`` keep running as they are (their pids too);
    ``adjusted`` change in place, without a restart (a pool scaled: the members
    that remain keep their pids; a group's strategy).
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    adjusted: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class SystemReload(Message):
    """Configuration should be reloaded (SIGHUP).

    A runtime run from a system file re-reads it first: ``plan`` says what the
    reload changed, or ``error`` why it changed nothing (or stopped part-way).
    Otherwise both are None and reloading is up to the receivers.
    """

    name = "system.reload"
    plan: ReloadPlan | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "error")


@dataclass(slots=True, frozen=True)
class EventSubscriberError(Message):
    """An EventBus subscriber raised while handling ``event``."""

    name = "event.subscriber_error"
    severity = Severity.ERROR
    event: str
    handler: str
    error: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        safe_fields(self, "handler", "error", "traceback")


# ---- workers (the process boundary) -------------------------------------------


@dataclass(slots=True, frozen=True)
class WorkerStarted(Message):
    """A worker process reported ready."""

    name = "worker.started"
    worker: str
    role: Role
    pid: int
    incarnation: int


@dataclass(slots=True, frozen=True)
class WorkerExited(Message):
    """A worker process ended; ``lost`` counts what it emitted that never arrived."""

    name = "worker.exited"
    severity = Severity.WARNING
    worker: str
    role: Role
    pid: int
    incarnation: int
    reason: str
    exit_code: int | None
    signal: str | None
    abnormal: bool
    emitted: int
    dispatched: int
    lost: int
    #: One word for the reason (see :data:`~bussdcc.kernel._vocab.ExitCause`).
    cause: ExitCause = "exited"
    #: After an abnormal exit, the last lines the worker wrote (stdout, stderr and logging; bounded).
    output: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


@dataclass(slots=True, frozen=True)
class WorkerHung(Message):
    """The watchdog found a worker hung (a tick past its deadline, no heartbeat) and kills it."""

    name = "worker.hung"
    severity = Severity.ERROR
    worker: str
    role: Role
    pid: int
    incarnation: int
    reason: str
    #: Every thread's Python stack, dumped by the worker just before it was killed ("" if none came).
    stacks: str = ""

    def __post_init__(self) -> None:
        safe_fields(self, "reason", "stacks")


@dataclass(slots=True, frozen=True)
class WorkerUnhealthy(Message):
    """A worker broke an expectation on what it emits, or its ``health()`` failed.

    ``what`` names the check (``expect plant.reading`` or ``health``), ``reason`` says how it
    failed, ``action`` what follows (``restart``: it is killed and respawned per its policy;
    ``report``: it keeps running, in state ``unhealthy``, until ``worker.healthy``).
    """

    name = "worker.unhealthy"
    severity = Severity.WARNING
    worker: str
    role: Role
    pid: int
    incarnation: int
    what: str
    reason: str
    action: str

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


@dataclass(slots=True, frozen=True)
class WorkerHealthy(Message):
    """A worker reported unhealthy recovered: every expectation is met and ``health()`` passes again."""

    name = "worker.healthy"
    worker: str
    role: Role
    pid: int
    incarnation: int
    #: Seconds it was unhealthy.
    unhealthy_for: float


@dataclass(slots=True, frozen=True)
class WorkerLimitExceeded(Message):
    """A worker used more memory or CPU than its limit allows and is killed."""

    name = "worker.limit_exceeded"
    severity = Severity.ERROR
    worker: str
    role: Role
    pid: int
    incarnation: int
    limit: str  # "rss" or "cpu"
    value: float
    maximum: float
    reason: str

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


@dataclass(slots=True, frozen=True)
class WorkerBackoff(Message):
    """A worker will be respawned after ``delay`` seconds (its ``attempt``-th failure in a row)."""

    name = "worker.backoff"
    severity = Severity.WARNING
    worker: str
    role: Role
    pid: int
    delay: float
    attempt: int
    reason: str

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


@dataclass(slots=True, frozen=True)
class WorkerGaveUp(Message):
    """The supervisor stopped respawning a worker: its policy or its restart intensity says so."""

    name = "worker.gave_up"
    severity = Severity.ERROR
    worker: str
    role: Role
    pid: int
    restarts: int
    reason: str

    def __post_init__(self) -> None:
        safe_fields(self, "reason")


@dataclass(slots=True, frozen=True)
class FrameRejected(Message):
    """A frame was malformed, oversized, named an unknown message, or came from no verified worker.

    ``worker`` is empty for a peer that is no worker of ours; ``count`` is how many
    frames this report stands for (reports about strangers are rate-limited).
    """

    name = "worker.frame_rejected"
    severity = Severity.WARNING
    worker: str
    error: str
    count: int = 1

    def __post_init__(self) -> None:
        safe_fields(self, "error")


@dataclass(slots=True, frozen=True)
class WorkerOutput(Message):
    """A line a worker wrote to its stdout or stderr (in the control event stream; not dispatched)."""

    name = "worker.output"
    worker: str
    pid: int
    stream: str
    line: str

    def __post_init__(self) -> None:
        safe_fields(self, "line")


@dataclass(slots=True, frozen=True)
class RecorderDropped(Message):
    """The recorder dropped ``count`` of the ``total`` messages it was given (the disk could not keep up).

    Written into the recording itself whenever the count changes, and when a file ends.
    """

    name = "recorder.dropped"
    severity = Severity.WARNING
    count: int
    total: int

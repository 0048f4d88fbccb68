"""The four kinds of component, their lifecycles, and the context each is handed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, TypeAlias, TypeVar, cast

from ._builtin import DeviceOffline, DeviceOnline
from ._bus import EventBus
from ._calls import CallPort, DeviceHandle
from ._clock import ClockProtocol
from ._context import RuntimeView
from ._event import Event
from ._message import Message
from ._state import StateStore

__all__ = [
    "Context",
    "Device",
    "Interface",
    "OnUnhealthy",
    "Process",
    "RestartPolicy",
    "Service",
    "Strategy",
    "Supervised",
    "handles_events",
    "has_health",
    "restart_policy",
    "tick_deadline",
]


#: What happens when a worker ends without being asked to (OTP's restart types).
RestartPolicy: TypeAlias = Literal["permanent", "transient", "temporary"]
#: Group restart strategies (OTP's): who else is restarted when one member dies.
Strategy: TypeAlias = Literal["one_for_one", "one_for_all", "rest_for_one"]

#: What the supervisor does with a worker found unhealthy: restart it, or only report it.
OnUnhealthy: TypeAlias = Literal["restart", "report"]

_POLICIES: Final[tuple[str, ...]] = ("permanent", "transient", "temporary")


def restart_policy(component: object) -> RestartPolicy:
    """A component's ``restart`` as a policy: ``True`` is ``"permanent"``, ``False`` is ``"temporary"``."""
    value = getattr(component, "restart", True)
    if value is True:
        return "permanent"
    if value is False:
        return "temporary"
    if value in _POLICIES:
        return cast(RestartPolicy, value)
    raise ValueError(f"restart must be True, False or one of {', '.join(_POLICIES)}; not {value!r}")


class Supervised:
    """Supervision settings shared by Devices and Services (each runs in its own process).

    Every field has a default that needs no configuration; override any of
    them on the class or on the instance.
    """

    #: ``"permanent"`` (or ``True``): always respawn; ``"transient"``: respawn only after an
    #: abnormal exit (non-zero code, signal, hang, limit); ``"temporary"`` (or ``False``): never.
    restart: bool | RestartPolicy = True
    #: A failure that will not be restarted shuts the whole runtime down.
    critical: bool = False
    #: Seconds the worker has to report ready (after connect/start).
    start_timeout: float = 10.0
    #: A Service that takes none of the events sent to it for this long is killed as hung.
    event_timeout: float = 10.0
    #: Seconds one ``tick`` may run before the worker is killed as hung (``None``: 10 x interval, at least 10 s).
    tick_timeout: float | None = None
    #: Seconds between the worker's heartbeats; ``0`` turns heartbeats off.
    heartbeat_interval: float = 0.25
    #: A worker whose heartbeats stop for this long (say, a C call holding the GIL) is killed as hung.
    heartbeat_timeout: float = 5.0
    #: Resident memory (bytes) above which the worker is killed and respawned (``None``: no limit).
    max_rss: int | None = None
    #: CPU use (percent of one core, averaged over ``cpu_window`` seconds) above which the worker
    #: is killed and respawned (``None``: no limit).
    max_cpu: float | None = None
    cpu_window: float = 5.0
    #: Seconds a graceful stop may take before SIGTERM.
    stop_timeout: float = 5.0
    #: Seconds after SIGTERM before SIGKILL.
    kill_timeout: float = 2.0
    #: At most this many respawns within ``restart_window`` seconds, then give up.
    max_restarts: int = 5
    restart_window: float = 60.0
    #: The first respawn after a healthy run is immediate; each further one waits twice as
    #: long as the last (with +-25% jitter), from ``backoff_initial`` up to ``backoff_max``.
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    #: An incarnation that stays up this long counts as healthy: the backoff starts over.
    backoff_reset: float = 10.0
    #: Keep a hot spare: a next incarnation forked and set up ahead, gated, which a respawn
    #: releases instead of forking (one more idle process per worker, for a faster respawn).
    spare: bool = False
    #: What the worker promises to emit once ready: message name -> seconds, e.g.
    #: ``{"plant.reading": 2.0}``: at least one ``plant.reading`` from it every 2 s.
    expect: Mapping[str, float] = MappingProxyType({})  # read-only: set a dict of your own
    #: Seconds between two calls of ``health()`` in the worker (only if the class defines it).
    health_interval: float = 5.0
    #: Seconds one ``health()`` call may take; past that it counts as failing.
    health_timeout: float = 10.0
    #: A broken expectation or a failing ``health()``: ``"restart"`` the worker (under its
    #: restart policy, intensity and backoff) or only ``"report"`` it (state ``unhealthy``).
    on_unhealthy: OnUnhealthy = "restart"

    def health(self) -> bool | str:
        """Whether the worker is healthy: ``True``; ``False`` or a reason (a string) if not.

        Runs in the worker, on a thread of its own, every ``health_interval`` seconds once
        the worker is ready (only if a subclass defines it); raising counts as failing.
        """
        return True

    #: Workers (or pools) by name this one starts after, once they are ready, and stops before.
    after: tuple[str, ...] | list[str] = ()
    #: Workers (or pools) this one needs: as ``after``, and it is stopped and restarted with them
    #: (systemd's ``BindsTo``); it gives up when one of them does.
    requires: tuple[str, ...] | list[str] = ()
    #: Environment variables set in the worker's process (over the runtime's own), just after fork.
    env: dict[str, str] | None = None
    #: The worker's working directory (``None``: the runtime's).
    cwd: str | None = None
    #: The user and group (names or ids) the worker runs as; only a runtime running as root may set them.
    user: str | int | None = None
    group: str | int | None = None


class Device(Supervised):
    """A boundary to hardware or an external resource; runs in its own worker process.

    Lifecycle: ``attach(ctx)`` → ``connect()``; ``detach()`` → ``disconnect()``.
    """

    kind: ClassVar[str] = "device"
    #: How many calls to its methods may run at once (on a thread pool); 1 runs them in arrival order.
    concurrency: ClassVar[int] = 1

    def __init__(self, *, id: str, config: Any = None) -> None:
        self.id = id
        self.config = config
        self.ctx: Context | None = None
        self.online = False

    @property
    def name(self) -> str:
        """A device's worker is named after its ``id``."""
        return self.id

    def attach(self, ctx: Context) -> None:
        """Bind the context and connect."""
        self.ctx = ctx
        self.connect()
        self.online = True

    def detach(self) -> None:
        """Disconnect and drop the context."""
        try:
            self.disconnect()
        finally:
            self.online = False
            self.ctx = None

    def set_online(self, online: bool) -> None:
        """Report a change of link state as ``device.online`` / ``device.offline``."""
        self.online = online
        if self.ctx is not None:
            cls = DeviceOnline if online else DeviceOffline
            self.ctx.emit(cls(device=self.id, kind=self.kind))

    def connect(self) -> None:
        """Open the hardware or resource."""

    def disconnect(self) -> None:
        """Close the hardware or resource."""


class Process:
    """Synchronous, event-driven logic that runs in the parent and sees every message."""

    name: str = "process"

    def attach(self, ctx: Context) -> None:
        """Bind the context (boot, before ``start``)."""
        self.ctx = ctx

    def start(self, ctx: Context) -> None:
        """Called once during boot, after ``attach``."""

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        """React to one dispatched message; never called concurrently with itself."""

    def stop(self, ctx: Context) -> None:
        """Called once during shutdown."""

    def detach(self) -> None:
        """Release the context (shutdown, after ``stop``)."""


class Interface(Process):
    """A Process by role: an adapter between the outside world and messages."""

    name: str = "interface"


class Service(Supervised):
    """A time-driven worker: ``start``, then ``tick`` every ``interval`` seconds, then ``stop``.

    Runs in its own worker process. Override ``handle_event`` to receive every
    dispatched message there as well; services that do not are sent nothing.
    """

    name: str = "service"
    interval: float = 1.0
    enabled: bool = True

    def attach(self, ctx: Context) -> None:
        """Bind the context (in the worker, before ``start``)."""
        self.ctx = ctx

    def start(self, ctx: Context) -> None:
        """Called once when the service starts."""

    def tick(self, ctx: Context) -> None:
        """Called every ``interval`` seconds while the service runs."""

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        """React to one dispatched message (only if overridden)."""

    def stop(self, ctx: Context) -> None:
        """Called once when the service stops."""

    def detach(self) -> None:
        """Release the context (in the worker, after ``stop``)."""


def tick_deadline(service: Service) -> float:
    """Seconds one ``tick`` of ``service`` may run: its ``tick_timeout``, else 10 x interval, at least 10 s."""
    if service.tick_timeout is not None:
        return service.tick_timeout
    return max(10.0, 10.0 * service.interval)


def has_health(component: object) -> bool:
    """Whether a Service's or Device's class defines its own ``health`` check."""
    return getattr(type(component), "health", None) is not Supervised.health


def handles_events(component: object) -> bool:
    """Whether a Service's class overrides ``handle_event`` (only those are sent events)."""
    return type(component).handle_event is not Service.handle_event  # type: ignore[attr-defined]


D = TypeVar("D", bound=Device)


class Context:
    """Clock, event bus, state, runtime access, and ``emit`` — nothing more."""

    __slots__ = ("_calls", "_emit", "clock", "events", "runtime", "state")

    def __init__(
        self,
        *,
        clock: ClockProtocol,
        events: EventBus,
        state: StateStore,
        runtime: RuntimeView,
        emit: Callable[[Message], None],
        calls: CallPort | None = None,
    ) -> None:
        self.clock = clock
        self.events = events
        self.state = state
        self.runtime = runtime
        self._emit = emit
        self._calls = calls

    def emit(self, message: Message) -> None:
        """Hand ``message`` to the runtime, the one authority that dispatches it."""
        if not isinstance(message, Message):
            raise TypeError(f"emit() takes a Message, not {type(message).__name__}")
        self._emit(message)

    def device(self, cls: type[D], id: str, *, timeout: float = 10.0, wait: bool = False) -> DeviceHandle[D]:
        """A typed handle to call the methods of the device ``id`` (a ``cls``), routed by the runtime."""
        if self._calls is None:
            raise TypeError("this context cannot reach devices (it belongs to no runtime)")
        self._calls.check(cls, id)
        return DeviceHandle(cls, id, self._calls, timeout=timeout, wait=wait)

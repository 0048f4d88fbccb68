"""Run one Service or one Device inside a worker process."""

from __future__ import annotations

import time
import traceback
from typing import assert_never

from ..errors import UnknownDevice
from ..kernel import Context, Device, Service, Severity
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ..kernel._calls import fail
from ..kernel._components import handles_events, restart_policy, tick_deadline
from ..kernel._text import emit_report
from ._calls import CallServer
from ._channel import Channel
from ._health import HealthCheck
from ._signals import stop_arrived
from ._watchdog import Watchdog

#: Exit code of a worker whose ``start``/``connect`` raised.
EXIT_START_FAILED = 3


def _start_failed(channel: Channel, exc: BaseException) -> int:
    channel.send_control(p.StartFailed(repr(exc), traceback.format_exc()))
    return EXIT_START_FAILED


def _deliver(svc: Service, ctx: Context, channel: Channel, frame: p.Deliver) -> None:
    # The parent judges a hang from the last event taken (beat), not from the frame's start.
    for raw in frame.items:
        channel.beat()  # progress the parent can see, however long each event takes
        try:
            item = p.decode(raw, p.ITEMS)
            if not isinstance(item, p.Envelope):
                continue
            evt = p.envelope_event(item)
        except Exception as exc:
            # A message class the worker does not know (defined after boot) is
            # reported, not fatal.
            channel.emit(m.ServiceError(service=svc.name, error=f"undeliverable event: {exc!r}"))
            continue
        try:
            svc.handle_event(ctx, evt)
        except Exception as exc:
            if evt.payload.severity >= Severity.ERROR:
                continue
            report = m.ServiceError(service=svc.name, error=repr(exc), evt=evt, traceback=traceback.format_exc())
            emit_report(ctx.emit, report)  # with the event if it fits, or without: never a crash


def _normal_exit(exc: SystemExit) -> bool:
    return exc.code is None or exc.code == 0


def run_service(svc: Service, ctx: Context, channel: Channel, dog: Watchdog) -> int:
    """start, tick every ``interval`` (handling events in between), stop; return the exit code.

    ``SystemExit(0)`` (or ``sys.exit()``) from ``tick`` or ``handle_event`` ends the service
    normally: it stops, says goodbye and exits 0.
    """
    try:
        with dog.busy("start", svc.start_timeout):
            svc.attach(ctx)
            svc.start(ctx)
    except Exception as exc:
        return _start_failed(channel, exc)
    # A start longer than heartbeat_timeout must not look like stopped heartbeats to a parent
    # that looks before dog.ready() has beaten again.
    dog.beat()
    channel.send_control(p.Ready())
    dog.ready()
    health = HealthCheck(svc, channel)
    health.start()
    wants_events = handles_events(svc)
    temporary = restart_policy(svc) == "temporary"
    deadline = tick_deadline(svc)
    failure: tuple[str, str] | None = None
    next_tick = time.monotonic()
    stopping = False
    while not stopping:
        if svc.enabled and time.monotonic() >= next_tick:
            try:
                with dog.busy("tick", deadline):
                    svc.tick(ctx)
            except SystemExit as exc:
                if not _normal_exit(exc):
                    raise
                break
            except Exception as exc:
                tb = traceback.format_exc()
                ctx.emit(m.ServiceError(service=svc.name, error=repr(exc), traceback=tb))
                if temporary:
                    failure = (repr(exc), tb)
                    break
            next_tick = time.monotonic() + svc.interval
        timeout = max(0.0, next_tick - time.monotonic()) if svc.enabled else None
        for frame in channel.wait(timeout):
            match frame:
                case p.Deliver():
                    if wants_events:
                        try:
                            with dog.busy("handle_event", svc.event_timeout):
                                _deliver(svc, ctx, channel, frame)
                        except SystemExit as exc:
                            if not _normal_exit(exc):
                                raise
                            stopping = True
                case p.Stop():
                    stopping = True
                    stop_arrived()
                case p.ByeAck() | p.Reply() | p.Route() | p.RouteEnded() | p.Go():
                    pass
                case p.Call():  # the parent routes calls to devices only
                    channel.send_control(fail(frame.call_id, UnknownDevice(f"{svc.name!r} is a service")))
                case _:
                    assert_never(frame)
    health.stop()
    with dog.busy("stop", svc.stop_timeout):
        try:
            svc.stop(ctx)
        except Exception as exc:
            ctx.emit(m.ServiceError(service=svc.name, error=repr(exc), traceback=traceback.format_exc()))
        svc.detach()
    error: str | None = failure[0] if failure else None
    trace: str | None = failure[1] if failure else None
    channel.bye(error, trace, timeout=svc.stop_timeout + svc.kill_timeout)
    return 0


def run_device(dev: Device, ctx: Context, channel: Channel, dog: Watchdog) -> int:
    """connect, serve until told to stop, disconnect; return the exit code."""
    try:
        with dog.busy("start", dev.start_timeout):
            dev.attach(ctx)
    except Exception as exc:
        return _start_failed(channel, exc)
    try:
        server = CallServer(dev, channel)
    except Exception as exc:
        return _start_failed(channel, exc)
    dog.beat()  # see run_service
    channel.send_control(p.Ready(channel.open_direct()))
    dog.ready()
    health = HealthCheck(dev, channel)
    health.start()
    stopping = False
    direct = channel.direct.calls if channel.direct is not None else None
    while not stopping:
        for frame in channel.wait(None):
            match frame:
                case p.Call():
                    server.submit(frame)
                case p.Stop():
                    stopping = True
                    stop_arrived()
                case p.Deliver() | p.ByeAck() | p.Reply() | p.Route() | p.RouteEnded() | p.Go():
                    pass
                case _:
                    assert_never(frame)
        while direct and not stopping:  # calls the parent's threads sent straight here (see ``_direct``)
            peer, call = direct.popleft()
            server.submit(call, peer)
    health.stop()
    server.stop(dev.stop_timeout)
    try:
        with dog.busy("stop", dev.stop_timeout):
            dev.detach()
    except Exception as exc:
        ctx.emit(m.DeviceFailed(device=dev.id, kind=dev.kind, error=repr(exc), traceback=traceback.format_exc()))
    channel.bye(timeout=dev.stop_timeout + dev.kill_timeout)
    return 0


def stop_at_gate(component: Service | Device, channel: Channel) -> int:
    """Stopped before its Go: nothing of the component ran, so there is nothing to stop but the channel."""
    stop_arrived()
    channel.bye(timeout=component.stop_timeout + component.kill_timeout)
    return 0


def run_component(component: object, ctx: Context, channel: Channel) -> int:
    """Run a Service or a Device, with its heartbeat."""
    if not isinstance(component, Service | Device):
        raise TypeError(f"a worker hosts a Service or a Device, not {type(component).__name__}")
    dog = Watchdog(channel.spec, component.heartbeat_interval)
    dog.start()
    try:
        if isinstance(component, Service):
            return run_service(component, ctx, channel, dog)
        return run_device(component, ctx, channel, dog)
    finally:
        dog.stop()

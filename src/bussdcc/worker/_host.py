"""Run one Service or one Device inside a worker process."""

from __future__ import annotations

import time
import traceback
from typing import assert_never

from ..kernel import Context, Device, Service, Severity, handles_events
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._channel import Channel

#: Exit code of a worker whose ``start``/``connect`` raised.
EXIT_START_FAILED = 3


def _start_failed(channel: Channel, exc: BaseException) -> int:
    channel.send_control(p.StartFailed(repr(exc), traceback.format_exc()))
    return EXIT_START_FAILED


def _deliver(svc: Service, ctx: Context, channel: Channel, frame: p.Deliver) -> None:
    for raw in frame.items:
        channel.beat()  # progress the parent can see, however long each event takes
        try:
            item = p.decode_item(raw)
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
            ctx.emit(m.ServiceError(service=svc.name, error=repr(exc), evt=evt, traceback=traceback.format_exc()))


def run_service(svc: Service, ctx: Context, channel: Channel) -> int:
    """start, tick every ``interval`` (handling events in between), stop; return the exit code."""
    try:
        svc.attach(ctx)
        svc.start(ctx)
    except Exception as exc:
        return _start_failed(channel, exc)
    channel.send_control(p.Ready())
    wants_events = handles_events(svc)
    failure: tuple[str, str] | None = None
    next_tick = time.monotonic()
    stopping = False
    while not stopping:
        if svc.enabled and time.monotonic() >= next_tick:
            try:
                svc.tick(ctx)
            except Exception as exc:
                tb = traceback.format_exc()
                ctx.emit(m.ServiceError(service=svc.name, error=repr(exc), traceback=tb))
                if not svc.restart:
                    failure = (repr(exc), tb)
                    break
            next_tick = time.monotonic() + svc.interval
        timeout = max(0.0, next_tick - time.monotonic()) if svc.enabled else None
        for frame in channel.wait(timeout):
            match frame:
                case p.Deliver():
                    if wants_events:
                        _deliver(svc, ctx, channel, frame)
                case p.Stop():
                    stopping = True
                case p.ByeAck():
                    pass
                case _:
                    assert_never(frame)
    try:
        svc.stop(ctx)
    except Exception as exc:
        ctx.emit(m.ServiceError(service=svc.name, error=repr(exc), traceback=traceback.format_exc()))
    svc.detach()
    error: str | None = failure[0] if failure else None
    trace: str | None = failure[1] if failure else None
    channel.bye(error, trace, timeout=svc.stop_timeout + svc.kill_timeout)
    return 0


def run_device(dev: Device, ctx: Context, channel: Channel) -> int:
    """connect, serve until told to stop, disconnect; return the exit code."""
    try:
        dev.attach(ctx)
    except Exception as exc:
        return _start_failed(channel, exc)
    channel.send_control(p.Ready())
    stopping = False
    while not stopping:
        for frame in channel.wait(None):
            match frame:
                case p.Stop():
                    stopping = True
                case p.Deliver() | p.ByeAck():
                    pass
                case _:
                    assert_never(frame)
    try:
        dev.detach()
    except Exception as exc:
        ctx.emit(m.DeviceFailed(device=dev.id, kind=dev.kind, error=repr(exc), traceback=traceback.format_exc()))
    channel.bye(timeout=dev.stop_timeout + dev.kill_timeout)
    return 0


def run_component(component: object, ctx: Context, channel: Channel) -> int:
    """Run a Service or a Device."""
    if isinstance(component, Service):
        return run_service(component, ctx, channel)
    if isinstance(component, Device):
        return run_device(component, ctx, channel)
    raise TypeError(f"a worker hosts a Service or a Device, not {type(component).__name__}")

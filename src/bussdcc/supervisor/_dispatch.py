"""The authoritative dispatch: every message, from the parent or any worker, passes through here.

Runs on the thread that emits: the dispatch thread for what the hub hands over
(workers' messages, lifecycle messages), and any thread that calls ``emit``.
One lock keeps one order: the bus, the Processes and Interfaces, the workers'
outbox and the control stream all see messages in the same order.
"""

from __future__ import annotations

import threading
import time
import traceback
from time import time as _now
from typing import TYPE_CHECKING

import msgspec

from ..kernel import ClockProtocol, Context, Event, EventBus, Interface, Message, Process, Severity
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ..kernel._clock import SystemClock
from ..kernel._event import RUNTIME_SOURCE, event_at, event_ts
from ..kernel._frames import ENCODE_ERRORS, ENCODER
from ..kernel._recording import Recorder
from ..kernel._text import emit_report

_encode = ENCODER.encode
_body_decoders = p.BODY_DECODERS
_MAX_ITEM = p.MAX_ITEM
_time_ns = time.time_ns

if TYPE_CHECKING:
    from ._assembly import Assembly


def record_output(recorder: Recorder, item: bytes) -> None:
    """Record a line of worker output, given as the encoded Envelope of a ``WorkerOutput``."""
    try:
        env = p.decode(item, p.ITEMS)
        if isinstance(env, p.Envelope):
            out = p.decode_message(env.name, env.body)
            if isinstance(out, m.WorkerOutput):
                recorder.output(out.worker, out.stream, out.line, env.ts)
    except Exception:
        pass  # not a line of output: nothing to record


class Receiver:
    """A Process or Interface, run in the parent, with its own context."""

    __slots__ = ("component", "ctx", "interface", "name")

    def __init__(self, name: str, component: Process, ctx: Context) -> None:
        self.name = name
        self.component = component
        self.ctx = ctx
        self.interface = isinstance(component, Interface)


class Dispatch:
    """Dispatches events in one order to the bus, the receivers, the workers and the control stream."""

    def __init__(self, events: EventBus, clock: ClockProtocol) -> None:
        self.events = events
        self.clock = clock
        #: What runs this boot (None while down); set by the runtime as it boots and shuts down.
        self.parts: Assembly | None = None
        self.receivers: tuple[Receiver, ...] = ()
        self.dispatched = 0
        #: Records every dispatched message and worker output line (set while recording).
        self.recorder: Recorder | None = None
        self._lock = threading.RLock()

    def emit(self, message: Message, source: str = RUNTIME_SOURCE) -> None:
        """Dispatch ``message`` now, on this thread."""
        if type(self.clock) is not SystemClock:
            self.dispatch(Event(message, self.clock.now_utc(), source))
            return
        # The real clock's now_utc() is this instant: its datetime is built only if a handler reads it,
        # and the envelope is encoded with the very timestamp the Event holds. The encode is written
        # out as in dispatch(), not shared through a call: this is the in-process path, per message.
        ts = _now()
        try:
            item = _encode(("m", message.name, message, ts, source))  # an Envelope's array
            if len(item) > _MAX_ITEM:
                raise ValueError("over the item limit")
        except ENCODE_ERRORS:
            item = p.encode_envelope(message, ts, source)  # raises the typed error
        self.dispatch(event_at(message, ts, source), item)

    def dispatch(self, evt: Event[Message], item: bytes | None = None, incarnation: int = 0, seq: int = 0) -> None:
        """Dispatch ``evt`` (``item``: its encoded envelope, if known); waits while the outbox is full.

        From a worker: ``incarnation`` and ``seq`` are its incarnation and the message's sequence number.
        """
        parts = self.parts
        if item is None:
            # Encode first, always: an unencodable or oversized message is refused
            # before anyone sees it, whether or not a worker wants it today.
            payload = evt.payload
            try:
                item = _encode(("m", payload.name, payload, event_ts(evt), evt.source))  # an Envelope's array
                if len(item) > _MAX_ITEM:
                    raise ValueError("over the item limit")
            except ENCODE_ERRORS:
                item = p.encode_envelope(payload, event_ts(evt), evt.source)  # raises the typed error
        # ``with``, not acquire() then try: a signal handler's exception (Ctrl-C on a thread that
        # emits) can land as a call returns, and would leave the lock held; none lands between
        # a with's enter and its block.
        with self._lock:
            self.dispatched += 1
            now = _time_ns()
            recorder = self.recorder
            if recorder is not None:
                recorder.message(evt, incarnation, seq, now)
            if self.events._subs:
                self.events.publish(evt)
            for rec in self.receivers:
                try:
                    rec.component.handle_event(rec.ctx, evt)
                except Exception as exc:
                    self._handler_failed(rec, evt, exc)
            if parts is not None:
                if parts.supervisor.targets:
                    parts.supervisor.post(item)
                parts.control.tap(evt.payload.severity, item, (now, incarnation, seq))
        if parts is not None and parts.supervisor.outbox and not parts.hub.in_hub:
            parts.hub.wake()
            # Every emitter waits for room, handlers and the dispatch thread too: the hub
            # makes room without them (the rule, and why it always ends, is in _flow).
            parts.hub.wait_for_room()

    def in_handler(self) -> bool:
        """Whether this thread is inside a dispatch, or is a runtime thread (so must not wait on the hub)."""
        if self._lock._is_owned():  # type: ignore[attr-defined]
            return True
        parts = self.parts
        return parts is not None and (parts.hub.in_hub or parts.dispatcher.on_thread)

    def _handler_failed(self, rec: Receiver, evt: Event[Message], exc: Exception) -> None:
        if evt.payload.severity >= Severity.ERROR:
            return
        tb = traceback.format_exc()
        err: Message
        if rec.interface:
            err = m.InterfaceError(interface=rec.name, error=repr(exc), evt=evt, traceback=tb)
        else:
            err = m.ProcessError(process=rec.name, error=repr(exc), evt=evt, traceback=tb)
        # Whatever the handler's exception says, its report must not stop the loop:
        # the receivers after it still get this event.
        emit_report(self.emit, err)

    def tap(self, severity: int, item: bytes) -> None:
        """Hand a line of worker output to the recorder and the control stream, in dispatch order."""
        parts = self.parts
        recorder = self.recorder
        if parts is None and recorder is None:
            return
        with self._lock:  # the control stream keeps dispatch's order
            if recorder is not None:
                record_output(recorder, item)
            if parts is not None:
                parts.control.tap(severity, item, (time.time_ns(), 0, 0))

    def dispatch_item(self, env: p.Envelope, item: bytes, worker: str, incarnation: int = 0, seq: int = 0) -> None:
        """Dispatch what ``worker`` sent (dispatch thread): the ``seq``-th item of its ``incarnation``."""
        decoder = _body_decoders.get(env.name)
        if decoder is None:
            payload = p.decode_message(env.name, env.body)  # finds (and keeps) the decoder, or raises
        else:
            try:
                payload = decoder.decode(env.body)
            except (msgspec.DecodeError, ValueError):
                payload = p.decode_message(env.name, env.body)  # raises the typed error
        evt = event_at(payload, env.ts, worker)
        if env.source != worker:  # the routing id, not the frame, says who sent it
            item = p.encode_envelope(evt.payload, env.ts, worker)
        self.dispatch(evt, item, incarnation, seq)

    # ---- receivers ---------------------------------------------------------------

    def start_receiver(self, rec: Receiver) -> None:
        """Attach and start a Process or Interface; its error is reported, not raised."""
        try:
            rec.component.attach(rec.ctx)
            rec.component.start(rec.ctx)
        except Exception as exc:
            self._receiver_error(rec, exc)
            return
        self.emit(m.InterfaceStarted(interface=rec.name) if rec.interface else m.ProcessStarted(process=rec.name))

    def stop_receiver(self, rec: Receiver) -> None:
        """Stop and detach a Process or Interface; its error is reported, not raised."""
        try:
            rec.component.stop(rec.ctx)
            rec.component.detach()
        except Exception as exc:
            self._receiver_error(rec, exc)
        self.emit(m.InterfaceStopped(interface=rec.name) if rec.interface else m.ProcessStopped(process=rec.name))

    def _receiver_error(self, rec: Receiver, exc: Exception) -> None:
        tb = traceback.format_exc()
        if rec.interface:
            self.emit(m.InterfaceError(interface=rec.name, error=repr(exc), traceback=tb))
        else:
            self.emit(m.ProcessError(process=rec.name, error=repr(exc), traceback=tb))

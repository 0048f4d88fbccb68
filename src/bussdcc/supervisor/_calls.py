"""Calls to devices, routed by the parent: the one place that knows where each device lives.

Callers in the parent (any thread) and workers (a :class:`~bussdcc.kernel.protocol.Request`)
hand calls to the :class:`CallRouter`, which runs on the hub thread only: it sends
each to the device's current incarnation, matches replies by call id, parks calls
that wait for a device to become ready, and fails the calls of an incarnation
as soon as its death is known. The hub never waits on a device: callers wait on
their own latch or future.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec

from ..errors import (
    DeviceCallError,
    DeviceCrashed,
    DeviceTimeout,
    DeviceUnavailable,
    RuntimeStateError,
    UnknownDevice,
    UnknownMethod,
)
from ..kernel import Device
from ..kernel import protocol as p
from ..kernel._calls import MAX_TIMEOUT, Latch, Outgoing, call_endpoint, callable_methods, fail
from ._direct import DirectCalls, Line
from ._latency import CALL_BUCKETS, Histogram
from ._workers import WorkerState

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher
    from ._hub import Hub
    from ._timers import Timer
    from ._workers import Incarnation, Worker

# Call ids are unique for the life of the process, so no reply can ever match a later call.
_ids: Final = itertools.count(1)


class _Pending:
    __slots__ = ("call_id", "deadline", "device", "done", "frame", "identity", "method", "started", "wait")

    def __init__(self, call_id: int, call: Outgoing, frame: bytes, done: Callable[[p.Reply], None]) -> None:
        self.call_id = call_id
        self.device = call.device
        self.method = call.method
        self.frame = frame
        self.started = time.monotonic()
        self.deadline = self.started + call.timeout
        self.wait = call.wait
        self.done = done
        self.identity: bytes | None = None  # the incarnation it was sent to


def _coming_back(worker: Worker) -> bool:
    """Whether a device that is not ready now will be without anyone asking (worth waiting for)."""
    if worker.stop_requested:
        return False
    state = worker.state
    return (
        state in (WorkerState.STARTING, WorkerState.BACKOFF)
        # Its group restarts it, or its health does (stopped for it, gracefully, to be respawned).
        or (state is WorkerState.STOPPING and worker.intent in ("hold", "run"))
        or (state is WorkerState.STOPPED and worker.incarnations == 0)  # boot has not started it yet
    )


def _unlink(endpoint: str) -> None:
    try:
        os.unlink(endpoint.removeprefix("ipc://"))
    except OSError:
        pass  # removed by the device itself, or with the run directory


def _ended(inc: Incarnation, reason: str, crashed: bool, device: str, method: str) -> DeviceCallError:
    """Why a call in flight on ``inc`` failed when it ended."""
    if crashed:
        return DeviceCrashed(f"device {device!r} (pid {inc.pid}) died during {method}(): {reason}", reason=reason)
    return DeviceUnavailable(f"device {device!r} stopped during {method}()", state="stopped")


class CallRouter:
    """Routes calls to device incarnations and their replies back (hub thread only)."""

    def __init__(self, workers: dict[str, Worker]) -> None:
        self._workers = workers
        self.hub: Hub | None = None
        self._pending: dict[int, _Pending] = {}
        self._by_identity: dict[bytes, set[int]] = {}
        self._parked: dict[str, list[_Pending]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._timer: Timer | None = None
        self._timer_at = 0.0
        self.closed: str | None = None
        self._late = 0
        #: How long answered calls took, per device (routed to answered; read at scrape time).
        self.latency: dict[str, Histogram] = {}
        #: Calls the parent's threads make straight to a ready device (see ``_direct``).
        self.direct = DirectCalls()

    def histogram(self, device: str) -> Histogram:
        """The call latency histogram of ``device`` (written under ``direct.lock``: callers write it too)."""
        hist = self.latency.get(device)
        if hist is None:
            hist = self.latency.setdefault(device, Histogram(CALL_BUCKETS))
        return hist

    @property
    def late(self) -> int:
        """Replies that matched no pending call (late, or for a call that timed out), routed or direct."""
        return self._late + self.direct.late

    def counts(self) -> tuple[int, int]:
        """Calls in flight (sent or parked), and those parked for a device not ready; any thread."""
        parked = sum(len(calls) for calls in tuple(self._parked.values()))
        return len(self._pending) + self.direct.in_flight(), parked

    # ---- taking calls ----------------------------------------------------------------

    def submit(self, call: _Pending) -> None:
        """Route one call: send it, park it, or fail it at once."""
        worker = self._workers.get(call.device)
        if self.closed is not None:
            self._fail(call, DeviceUnavailable(f"{self.closed}", state="stopped"))
            return
        if worker is None or not isinstance(worker.component, Device):
            devices = tuple(sorted(n for n, w in self._workers.items() if isinstance(w.component, Device)))
            self._fail(call, UnknownDevice(f"no device {call.device!r}; devices: {list(devices)}", available=devices))
            return
        allowed = callable_methods(type(worker.component))
        if call.method not in allowed:
            self._fail(
                call,
                UnknownMethod(
                    f"{type(worker.component).__name__} {call.device!r} has no callable method {call.method!r}; "
                    f"it has {sorted(allowed)}",
                    available=tuple(sorted(allowed)),
                ),
            )
            return
        inc = worker.current
        self._pending[call.call_id] = call
        self._expire_at(call)
        up = worker.state in (WorkerState.RUNNING, WorkerState.UNHEALTHY)  # an unhealthy device still answers
        if up and inc is not None and inc.ready and not inc.exited:
            self._send(inc, call)
        elif call.wait and _coming_back(worker):
            # On its way back: wait for it. A stopped or failed device is not coming back by itself.
            self._parked.setdefault(worker.name, []).append(call)
        else:
            del self._pending[call.call_id]
            state = worker.state.value
            self._fail(call, DeviceUnavailable(f"device {call.device!r} is {state}", state=state))

    def cancel(self, call_id: int) -> None:
        """The caller stopped waiting: forget the call."""
        call = self._pending.pop(call_id, None)
        if call is not None:
            self._unlink(call)

    def _send(self, inc: Incarnation, call: _Pending) -> None:
        assert self.hub is not None
        call.identity = inc.identity
        self._by_identity.setdefault(inc.identity, set()).add(call.call_id)
        self.hub.send(inc.identity, call.frame)

    def _unlink(self, call: _Pending) -> None:
        if call.identity is not None:
            ids = self._by_identity.get(call.identity)
            if ids is not None:
                ids.discard(call.call_id)
        else:
            parked = self._parked.get(call.device)
            if parked is not None and call in parked:
                parked.remove(call)

    def _fail(self, call: _Pending, exc: DeviceCallError) -> None:
        call.done(fail(call.call_id, exc))

    # ---- replies and requests from workers ----------------------------------------------------

    def on_reply(self, inc: Incarnation, frame: p.Reply) -> None:
        """A device answered a call."""
        call = self._pending.get(frame.call_id)
        if call is None or call.identity != inc.identity:
            self._late += 1
            return
        del self._pending[frame.call_id]
        self._unlink(call)
        hist = self.histogram(call.device)
        with self.direct.lock:
            hist.observe(time.monotonic() - call.started)
        call.done(frame)

    def _route_ended(self, line: Line, reason: str, *, crashed: bool) -> None:
        """Tell the Services that call ``line`` directly that it ended: their calls on it fail now."""
        if line.holders and self.hub is not None:
            pid = line.inc.pid or 0
            data = p.encode(p.RouteEnded(line.device, line.number, pid, reason, crashed))
            for identity in sorted(line.holders):
                self.hub.send(identity, data)

    def on_request(self, inc: Incarnation, frame: p.Request, *, service: bool = False) -> None:
        """A worker calls a device: route it like a local call, answer with a Reply.

        A Service is also told the device's line, if it has one: its next calls go straight there.
        """
        assert self.hub is not None
        hub, origin, their_id = self.hub, inc.identity, frame.call_id
        line = self.direct.lines.get(frame.device) if service else None
        if line is not None and origin not in line.holders:
            line.holders.add(origin)
            hub.send(origin, p.encode(p.Route(line.device, line.number, line.endpoint, line.key)))

        def done(reply: p.Reply) -> None:
            hub.send(origin, p.encode(p.Reply(their_id, reply.result, reply.failure)))

        call_id = next(_ids)
        call_frame = p.encode(p.Call(call_id, frame.method, frame.args, frame.kwargs))
        # A worker's deadline is taken with care: NaN or infinity must not reach the timers.
        timeout = frame.timeout if 0.0 <= frame.timeout <= MAX_TIMEOUT else (MAX_TIMEOUT if frame.timeout > 0 else 0.0)
        call = Outgoing(frame.device, frame.method, b"", b"", timeout, frame.wait)
        self.submit(_Pending(call_id, call, call_frame, done))

    # ---- incarnations coming and going ---------------------------------------------------------

    def ready(self, worker: Worker, inc: Incarnation) -> None:
        """A device incarnation is ready: send it the calls that waited for it."""
        assert self.hub is not None
        if inc.direct and inc.direct == call_endpoint(self.hub.endpoint, inc.slot, inc.number):
            # Only where it must be: a device does not choose what others connect to.
            self.direct.open(worker, inc, self.histogram(worker.name))
        parked = self._parked.pop(worker.name, None)
        for call in parked or ():
            if call.call_id in self._pending:
                self._send(inc, call)

    def down(self, worker: Worker) -> None:
        """A device will not come back (stopped or given up on): calls waiting for it fail now."""
        state = worker.state.value
        for call in self._parked.pop(worker.name, None) or ():
            if self._pending.pop(call.call_id, None) is not None:
                self._fail(call, DeviceUnavailable(f"device {call.device!r} is {state}", state=state))

    def ended(self, inc: Incarnation, reason: str, *, crashed: bool) -> None:
        """An incarnation is gone: its calls in flight fail now, not at their deadline."""
        line = self.direct.end(inc, lambda call_id, dev, name: fail(call_id, _ended(inc, reason, crashed, dev, name)))
        if line is not None:
            self._route_ended(line, reason, crashed=crashed)
            _unlink(line.endpoint)  # a device that died left its socket file behind
        self.direct.forget_holder(inc.identity)
        ids = self._by_identity.pop(inc.identity, None)
        for call_id in sorted(ids or ()):
            call = self._pending.pop(call_id, None)
            if call is None:
                continue
            self._fail(call, _ended(inc, reason, crashed, call.device, call.method))

    def close(self, reason: str) -> None:
        """The runtime is shutting down: every call still pending fails now."""
        self.closed = reason
        lines = self.direct.close(
            lambda call_id, dev, method: fail(call_id, DeviceUnavailable(f"device {dev!r}: {reason}", state="stopped"))
        )
        for line in lines:
            self._route_ended(line, reason, crashed=False)
        calls = sorted(self._pending.values(), key=lambda c: c.call_id)
        self._pending.clear()
        self._by_identity.clear()
        self._parked.clear()
        for call in calls:
            self._fail(call, DeviceUnavailable(f"device {call.device!r}: {reason}", state="stopped"))

    # ---- deadlines ---------------------------------------------------------------------------

    def _expire_at(self, call: _Pending) -> None:
        assert self.hub is not None
        heapq.heappush(self._deadlines, (call.deadline, call.call_id))
        if len(self._deadlines) > 2 * len(self._pending) + 1024:
            # Entries of answered calls stay until their deadline; drop them now and then.
            self._deadlines = [(d, i) for d, i in self._deadlines if i in self._pending]
            heapq.heapify(self._deadlines)
        if self._timer is None or call.deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = call.deadline
            self._timer = self.hub.call_later(max(0.0, call.deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        assert self.hub is not None
        self._timer = None
        now = time.monotonic()
        try:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, call_id = heapq.heappop(self._deadlines)
                call = self._pending.pop(call_id, None)
                if call is None:
                    continue
                self._unlink(call)
                if call.identity is None:  # parked: the device never became ready
                    late = DeviceUnavailable(f"device {call.device!r} did not become ready in time", state="waiting")
                    self._fail(call, late)
                else:
                    self._fail(call, DeviceTimeout(f"{call.device}.{call.method}() did not answer in time"))
        finally:
            # Re-armed whatever one failure raised: the other deadlines still hold.
            while self._deadlines and self._deadlines[0][1] not in self._pending:
                heapq.heappop(self._deadlines)
            if self._deadlines:
                self._timer_at = self._deadlines[0][0]
                self._timer = self.hub.call_later(max(0.0, self._timer_at - now), self._expire)


class ParentPort:
    """The parent's :class:`~bussdcc.kernel.CallPort`: calls go to the router on the hub thread."""

    def __init__(self, devices: Callable[[], dict[str, Device]]) -> None:
        self._devices = devices
        self._up: tuple[Hub, CallRouter] | None = None
        self._dispatcher: Dispatcher | None = None

    def attach(self, hub: Hub, router: CallRouter, dispatcher: Dispatcher) -> None:
        """The runtime is up: route calls through ``hub`` to ``router``."""
        self._up = hub, router
        self._dispatcher = dispatcher

    def detach(self) -> None:
        """The runtime is down: calls are unavailable."""
        self._up = None

    @property
    def async_direct(self) -> bool:
        """Replies are resolved by the hub thread: asyncio callers need no thread of their own."""
        return True

    def check(self, cls: type[Device], device: str) -> None:
        """Refuse an id that names no device, or a device of another class."""
        devices = self._devices()
        dev = devices.get(device)
        if dev is None:
            raise UnknownDevice(
                f"no device {device!r}; devices: {sorted(devices)}", device=device, available=tuple(sorted(devices))
            )
        if not isinstance(dev, cls):
            raise UnknownDevice(
                f"device {device!r} is a {type(dev).__name__}, not a {cls.__name__}",
                device=device,
                available=tuple(sorted(devices)),
            )

    def submit(self, call: Outgoing, done: Callable[[p.Reply], None]) -> int:
        """Encode the call here, route it on the hub thread."""
        call_id = next(_ids)
        found = self._up
        if found is None:
            done(fail(call_id, DeviceUnavailable("the runtime is not running", device=call.device, state="stopped")))
            return call_id
        hub, router = found
        frame = p.encode(p.Call(call_id, call.method, msgspec.Raw(call.args), msgspec.Raw(call.kwargs)))
        pending = _Pending(call_id, call, frame, done)
        if hub.in_hub:
            router.submit(pending)
        else:
            hub.call_soon(lambda: router.submit(pending))
        return call_id

    def roundtrip(self, call: Outgoing) -> tuple[bool, p.Reply | None]:
        """Make the call on this thread, straight to its device if it is up; else ``(False, None)``: route it."""
        found = self._up
        if found is None:
            return False, None
        hub, router = found
        line = router.direct.lines.get(call.device)
        me = threading.get_ident()
        if line is None or me == hub.thread.ident:
            return False, None
        worker = line.worker
        state = worker.state
        if worker.current is not line.inc or (state is not WorkerState.RUNNING and state is not WorkerState.UNHEALTHY):
            return False, None  # in a transition the hub knows best: it parks, refuses or waits
        if call.method not in line.methods:
            return False, None
        call_id = next(_ids)
        frame = p.encode(p.Call(call_id, call.method, msgspec.Raw(call.args), msgspec.Raw(call.kwargs)))
        hist = line.latency
        disp = self._dispatcher
        if disp is not None and me == disp.thread.ident:
            with disp.waiting():  # the hub reads on: the items the call emitted must reach us
                return router.direct.call(line, call_id, call.method, frame, timeout=call.timeout, latency=hist)
        return router.direct.call(line, call_id, call.method, frame, timeout=call.timeout, latency=hist)

    def cancel(self, call_id: int) -> None:
        """Forget the call on the hub thread."""
        found = self._up
        if found is not None:
            hub, router = found
            hub.call_soon(lambda: router.cancel(call_id))

    def block(self, latch: Latch, timeout: float) -> bool:
        """Wait on the latch (never on the hub thread, which must route the reply)."""
        found = self._up
        if found is not None and found[0].in_hub:
            raise RuntimeStateError("a device cannot be called from the runtime's I/O thread")
        disp = self._dispatcher
        if disp is not None and disp.on_thread:
            with disp.waiting():  # nothing is dispatched meanwhile: the hub must not wait for room
                return latch.wait(timeout)
        return latch.wait(timeout)

"""Device calls inside a worker: serving them (a Device) and making them (any component).

By default a Device's calls run one at a time, in arrival order, on the
worker's main thread, between reads of the socket: no thread hand-off on the
way in or out. A Device that declares ``concurrency = N`` (N > 1) runs up to N
at once on call threads while the main thread keeps reading; their replies go
out through the channel's thread-safe control path. Either way a reply leaves
after everything the call emitted.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable

import msgspec

from ..errors import (
    CallArgumentError,
    DeviceCallError,
    DeviceCrashed,
    DeviceError,
    DeviceUnavailable,
    ProtocolError,
    UnknownMethod,
)
from ..kernel import Device
from ..kernel import protocol as p
from ..kernel._calls import Latch, Outgoing, callable_methods, fail, method_spec
from ..kernel._text import safe_text
from ._channel import Channel
from ._direct import Route


def concurrency_of(device: Device) -> int:
    """How many calls the device runs at once (its ``concurrency``, default 1)."""
    value = getattr(device, "concurrency", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{type(device).__name__}.concurrency must be an int >= 1, not {value!r}")
    return value


# A thread other than the main one that waits for a reply reads the socket in
# short slices, so that the main thread's own sends never wait long for it.
_SLICE = 0.005
_YIELD = 0.0005


class CallServer:
    """Runs the calls sent to one Device on its call threads."""

    def __init__(self, device: Device, channel: Channel) -> None:
        self._device = device
        self._channel = channel
        self._methods = callable_methods(type(device))
        #: Calls for the call threads, each with the routing id of its direct caller (None: routed by the parent).
        self._queue: queue.SimpleQueue[tuple[p.Call, bytes | None] | None] = queue.SimpleQueue()
        self.stopping = False
        n = concurrency_of(device)
        self._threads = [
            threading.Thread(target=self._serve, name=f"bussdcc-call-{i}", daemon=True)
            for i in range(n if n > 1 else 0)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, frame: p.Call, peer: bytes | None = None) -> None:
        """Queue a call from the parent, or straight from ``peer`` (a direct caller); refused once stopping."""
        if self.stopping:
            self._refuse(frame, peer)
        elif self._threads:
            self._queue.put((frame, peer))
        elif peer is None:
            self._channel.send_control(self.run(frame))
        else:
            self._channel.send_direct(peer, self.run(frame))

    def _answer(self, reply: p.Reply, peer: bytes | None) -> None:  # any thread
        if peer is None:
            self._channel.post_control(reply)
        else:
            self._channel.post_direct(peer, reply)

    def _refuse(self, frame: p.Call, peer: bytes | None) -> None:
        exc = DeviceUnavailable(f"device {self._device.id!r} is stopping", state="stopping")
        self._answer(fail(frame.call_id, exc), peer)

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            frame, peer = job
            self._answer(self.run(frame), peer)

    def run(self, frame: p.Call) -> p.Reply:
        """Run one call and return its reply; whatever the method raises becomes a :class:`DeviceError`."""
        dev = self._device
        fn = self._methods.get(frame.method)
        if fn is None:
            names = tuple(sorted(self._methods))
            return fail(frame.call_id, UnknownMethod(f"no callable method {frame.method!r}", available=names))
        spec = method_spec(fn)
        try:
            args, kwargs = spec.decode_args(frame.args, frame.kwargs)
        except (msgspec.DecodeError, ValueError) as exc:
            return fail(frame.call_id, CallArgumentError(f"bad arguments for {dev.id}.{frame.method}(): {exc}"))
        try:
            result = fn(dev, *args, **kwargs)
        except BaseException as exc:  # the device keeps serving; the caller gets the error
            message = safe_text(str(exc))
            return fail(
                frame.call_id,
                DeviceError(
                    f"{dev.id}.{frame.method}() raised {type(exc).__name__}: {message}",
                    remote_type=type(exc).__name__,
                    remote_message=message,
                    remote_traceback=safe_text(traceback.format_exc()),
                ),
            )
        try:
            encoded = p.encode(result)
        except ProtocolError as exc:
            unsent = CallArgumentError(f"{dev.id}.{frame.method}() returned what cannot be sent: {exc}")
            return fail(frame.call_id, unsent)
        if len(encoded) > p.MAX_ITEM:
            big = f"{dev.id}.{frame.method}() returned {len(encoded)} bytes, over the {p.MAX_ITEM}-byte limit"
            return fail(frame.call_id, CallArgumentError(big))
        return p.Reply(frame.call_id, msgspec.Raw(encoded))

    def stop(self, timeout: float) -> None:
        """Refuse the calls still queued, let those running finish (up to ``timeout``), end the threads."""
        self.stopping = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._refuse(*job)
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            # Keep the socket moving: the running calls' replies leave through it.
            for late in self._channel.wait(0.05):
                if isinstance(late, p.Call):
                    self._refuse(late, None)
            self._refuse_direct()
        self._refuse_direct()
        self._channel.flush()

    def _refuse_direct(self) -> None:
        direct = self._channel.direct
        while direct is not None and direct.calls:
            peer, frame = direct.calls.popleft()
            self._refuse(frame, peer)


class WorkerPort:
    """A worker's :class:`~bussdcc.kernel.CallPort`: calls go to the parent as requests.

    The parent answers a Service's first call to a device that has a call endpoint
    with a :class:`~bussdcc.kernel.protocol.Route` too: from then on the worker's
    main thread calls that device straight (no hop through the parent), reading
    its channel meanwhile, until the parent says the device's incarnation ended
    (:class:`~bussdcc.kernel.protocol.RouteEnded`): a call in flight on it then
    fails at once, as when routed. Other threads, and devices not (yet) routed,
    go through the parent.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, Callable[[p.Reply], None]] = {}
        self._lock = threading.Lock()
        self._owner = threading.get_ident()
        self._routes: dict[str, Route] = {}
        self._ended: list[Route] = []  # their sockets are closed by the main thread
        channel.on_reply = self._on_reply
        channel.on_route = self._on_route

    def _on_route(self, frame: p.Route | p.RouteEnded) -> None:  # whoever reads the channel
        with self._lock:
            route = self._routes.get(frame.device)
            if isinstance(frame, p.Route):
                if route is not None:
                    route.ended = route.ended or p.RouteEnded(frame.device, route.line, 0, "replaced", crashed=False)
                    self._ended.append(route)
                self._routes[frame.device] = Route(frame)
            elif route is not None and route.line == frame.line:
                route.ended = frame
                del self._routes[frame.device]
                self._ended.append(route)

    def roundtrip(self, call: Outgoing) -> tuple[bool, p.Reply | None]:
        """On the main thread, call a device the parent routed us to straight; else ``(False, None)``."""
        if threading.get_ident() != self._owner:
            return False, None
        if self._ended:
            with self._lock:
                ended, self._ended = self._ended, []
            for old in ended:
                self._channel.forget_socket(old.sock)
                old.close()
        route = self._routes.get(call.device)
        if route is None:
            return False, None
        fresh = route.sock is None
        sock = route.open(self._channel.zctx)
        if fresh:
            self._channel.keep_socket(sock)
        call_id = next(self._ids)
        frame = p.encode(p.Call(call_id, call.method, msgspec.Raw(call.args), msgspec.Raw(call.kwargs)))
        if not route.send(frame):
            return False, None
        deadline = time.monotonic() + call.timeout
        while route.ended is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return True, None
            if self._channel.poll_with(sock, left):
                reply = route.take(call_id)
                if reply is not None:
                    return True, reply
        reply = route.take(call_id)  # the device answered before it died: its answer stands
        if reply is not None:
            return True, reply
        end = route.ended
        if end.crashed:
            exc: DeviceCallError = DeviceCrashed(
                f"device {call.device!r} (pid {end.pid}) died during {call.method}(): {end.reason}", reason=end.reason
            )
        else:
            exc = DeviceUnavailable(f"device {call.device!r} stopped during {call.method}()", state="stopped")
        return True, fail(call_id, exc)

    @property
    def async_direct(self) -> bool:
        """Replies need someone reading the socket: ``acall`` waits in a thread that does."""
        return False

    def check(self, cls: type[Device], device: str) -> None:
        """Only the parent knows the devices: it checks each call."""

    def submit(self, call: Outgoing, done: Callable[[p.Reply], None]) -> int:
        """Send a request to the parent."""
        call_id = next(self._ids)
        with self._lock:
            self._waiting[call_id] = done
        args, kwargs = msgspec.Raw(call.args), msgspec.Raw(call.kwargs)
        frame = p.Request(call_id, call.device, call.method, args, kwargs, call.timeout, call.wait)
        self._channel.post_control(frame)
        return call_id

    def cancel(self, call_id: int) -> None:
        """Forget the call: its reply, if it comes, is dropped."""
        with self._lock:
            self._waiting.pop(call_id, None)

    def _on_reply(self, frame: p.Reply) -> None:
        with self._lock:
            done = self._waiting.pop(frame.call_id, None)
        if done is not None:
            done(frame)

    def block(self, latch: Latch, timeout: float) -> bool:
        """Wait for the reply, reading the socket while no other thread does."""
        deadline = time.monotonic() + timeout
        while latch.reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if threading.get_ident() == self._owner:
                self._channel.pump(left)
            elif self._channel.try_pump(min(left, _SLICE)):
                latch.wait(min(left, _YIELD))  # the main thread may want the socket between our slices
            else:
                latch.wait(min(left, _SLICE))  # the socket's holder reads the reply for us
        return True

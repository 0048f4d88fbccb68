"""The parent's I/O thread: it alone touches the ZeroMQ socket and the fork server's reports.

Everything that changes worker state runs on this thread, either because a
frame or report arrived or because another thread queued a call with
:meth:`Hub.call_soon`; that makes supervision a single-threaded state machine.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar, cast

import msgspec
import zmq

from ..errors import BootError, RuntimeStateError
from ..kernel import protocol as p
from ._flow import OUTBOX_BYTES, QUEUE_BYTES, weigh
from ._timers import Timer, Timers
from ._wake import WakePipe
from ._zap import close_router, open_router, zap_replies

T = TypeVar("T")

# Per-worker pipe depth in frames; frames are at most BATCH_BYTES (plus one item), so
# this bounds what libzmq holds per worker while keeping the pipe full.
_HWM = 32
_READ_BURST = 256
_RETRY = 0.002
#: A peer that has not completed the ZMTP handshake within this is disconnected (its fd freed).
HANDSHAKE_MS = 5000
#: The ZAP domain of the workers' endpoint (a ZAP handler serves only its own).
WORKERS_DOMAIN = b"bussdcc-workers"


class HubClient(Protocol):
    """What the hub calls back into (on the hub thread)."""

    def on_frame(self, identity: bytes, data: bytes) -> None: ...
    def on_fork_readable(self) -> None: ...
    def on_stranger(self) -> None: ...
    def admit(self, username: bytes, password: bytes) -> bool: ...
    def on_fatal(self, reason: str) -> None: ...
    def on_fault(self, part: str, kind: str, error: str) -> None: ...
    def stalled_for(self, identity: bytes, since: float) -> float: ...
    def outbox_load(self) -> tuple[int, int]: ...
    def backlogged(self) -> bool: ...
    def takes_events(self, identity: bytes) -> bool: ...
    def on_stalled(self, identity: bytes, seconds: float) -> None: ...
    def drain_outbox(self) -> list[bytes]: ...
    def delivery_targets(self) -> list[bytes]: ...


class Hub:
    """Owns the ROUTER socket the workers connect to."""

    def __init__(self, endpoint: str, fork_fd: int, client: HubClient) -> None:
        self.endpoint = endpoint
        self._fork_fd = fork_fd
        self._client = client
        self._calls: deque[Callable[[], None]] = deque()
        self._waker = WakePipe()
        #: The hub thread's timers and periodic jobs (their faults reported through the client).
        self.timers = Timers(client.on_fault)
        self.call_later = self.timers.call_later
        self.every = self.timers.every
        self.fault = self.timers.fault
        self.recovered = self.timers.recovered
        self._running = True
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="bussdcc-hub", daemon=True)
        self.sock: zmq.Socket[bytes] | None = None
        self._queues: dict[bytes, deque[bytes]] = {}
        self._queued: dict[bytes, int] = {}  # identity -> weight of its queue (see _flow)
        self._stalled_since: dict[bytes, float] = {}
        self._retry: Timer | None = None
        self._reading = True
        #: Notified whenever the hub has taken the outbox.
        self.outbox_taken = threading.Condition()
        self._room_waiters = 0
        #: Set when the runtime starts shutting down: emitters stop waiting for room.
        self.closing = False
        #: Whether new workers can connect (the endpoint's path is there); not while fds run short.
        self.accepting = True
        #: Called on the hub thread after the endpoint is bound again (its socket file is new).
        self.after_bind: Callable[[], None] | None = None

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the thread and wait until the socket is bound."""
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            raise BootError(f"cannot bind {self.endpoint}: {self._error}") from self._error

    def stop(self) -> None:
        """Stop the thread and close the socket (idempotent)."""
        if self.thread.is_alive():
            self.call_soon(self._halt)
            self.thread.join()

    def _halt(self) -> None:
        self._running = False

    def rebind(self) -> None:
        """Bind the endpoint again, its file having been deleted (hub thread).

        The old listener keeps the workers connected through it (unbinding would
        drop them with what they have queued); the new one lets others connect.
        """
        if self.sock is not None:
            self.sock.bind(self.endpoint)
            self._bound()

    def _bound(self) -> None:
        if self.after_bind is not None:
            self.after_bind()

    def accept(self, on: bool) -> None:
        """Let new workers connect, or not (hub thread); the workers connected already stay.

        Unbinding would close every connection the listener accepted, so the
        door is closed by removing the endpoint's path (nobody can connect to a
        Unix socket without it) and opened by binding a new listener there, as
        :meth:`rebind` does. Each closing leaves the old listener (one fd) to the
        workers connected through it.
        """
        if on == self.accepting or self.sock is None:
            return
        path = self.endpoint.removeprefix("ipc://")
        if on:
            self.sock.bind(self.endpoint)
            self._bound()
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.accepting = on

    @property
    def in_hub(self) -> bool:
        """Whether the caller runs on the hub thread."""
        return threading.current_thread() is self.thread

    # ---- cross-thread calls -------------------------------------------------------

    def wake(self) -> None:
        """Make the hub loop run once more (e.g. to flush the outbox); safe from any thread, at any time."""
        self._waker.wake()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the hub thread."""
        self._calls.append(fn)
        self.wake()

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` on the hub thread and return its result."""
        if self.in_hub:
            return fn()
        if not self.thread.is_alive():
            raise RuntimeStateError("the runtime's hub thread is not running")
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.call_soon(run)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Never wait for ever on a hub that ended before it ran the call.
            slice_ = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                return fut.result(slice_)
            except TimeoutError:
                if not self.thread.is_alive() and not fut.done():
                    raise RuntimeStateError("the runtime's hub thread ended before the call ran") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    # ---- sending (hub thread only) ---------------------------------------------------

    def send(self, identity: bytes, data: bytes) -> None:
        """Queue a frame for one worker and send what its pipe takes now; never blocks."""
        queue = self._queues.get(identity)
        if queue is None:
            queue = self._queues[identity] = deque()
        queue.append(data)
        self._queued[identity] = self._queued.get(identity, 0) + weigh(1, len(data))
        self._pump(identity, queue)

    def forget(self, identity: bytes) -> None:
        """Drop what is still queued for a worker that is gone."""
        self._queues.pop(identity, None)
        self._queued.pop(identity, None)
        self._stalled_since.pop(identity, None)

    @property
    def congested(self) -> bool:
        """Whether some worker is so far behind with its events that the hub stops reading (back-pressure).

        Only event deliveries count: calls queued for a slow device wait for it
        alone (each caller is blocked on its own call, which bounds them).
        """
        takes = self._client.takes_events
        return any(size >= QUEUE_BYTES and takes(i) for i, size in self._queued.items())

    def _pump(self, identity: bytes, queue: deque[bytes]) -> None:
        assert self.sock is not None
        while queue:
            try:
                self.sock.send_multipart([identity, queue[0]], zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                queue.clear()  # the worker is gone
                self._queued[identity] = 0
                break
            self._queued[identity] -= weigh(1, len(queue.popleft()))
        if self._queued.get(identity, 0) < QUEUE_BYTES or not self._client.takes_events(identity):
            self._stalled_since.pop(identity, None)
        else:
            since = self._stalled_since.setdefault(identity, time.monotonic())
            stalled = self._client.stalled_for(identity, since)
            if stalled:
                # Back-pressure cannot fix a worker that handles nothing: report it as hung.
                self.forget(identity)
                self._client.on_stalled(identity, stalled)
                return
        if not queue:
            self._queues.pop(identity, None)
            self._queued.pop(identity, None)
        elif self._retry is None:
            # ROUTER cannot say when one peer's pipe has room again: look shortly.
            self._retry = self.call_later(_RETRY, self._pump_all)

    def _pump_all(self) -> None:
        self._retry = None
        try:
            for identity, queue in list(self._queues.items()):
                self._pump(identity, queue)
        finally:
            # Whatever one pump raised, what is still queued is looked at again shortly.
            if self._queues and self._retry is None:
                self._retry = self.call_later(_RETRY, self._pump_all)

    # ---- the loop ---------------------------------------------------------------

    def _main(self) -> None:
        # Only a process holding a live incarnation's routing id and token completes the
        # handshake: a stranger cannot keep a connection (an fd of the parent) open. That
        # matters beyond fairness: libzmq 4.3's ipc listener asserts that accept() failed
        # with anything but EMFILE (ipc_listener.cpp, errno_assert), so running out of fds
        # while a peer connects aborts the whole parent.
        options = {
            zmq.ROUTER_MANDATORY: 1,
            zmq.RCVHWM: _HWM,
            zmq.SNDHWM: _HWM,
            zmq.MAXMSGSIZE: p.MAX_FRAME,
            zmq.LINGER: 0,
            zmq.HANDSHAKE_IVL: HANDSHAKE_MS,
        }
        try:
            router = open_router(self.endpoint, WORKERS_DOMAIN, options)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        _, zap, sock = router
        self.sock = sock
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        # Always polled, congested or not: a handshake waits for its answer.
        poller.register(zap, zmq.POLLIN)
        poller.register(self._waker.fd, zmq.POLLIN)
        poller.register(self._fork_fd, zmq.POLLIN)
        try:
            while self._running:
                try:
                    self._iterate(poller, sock, zap)
                except BootError as exc:  # the fork server is gone: nothing can be respawned
                    poller.unregister(self._fork_fd)
                    self._client.on_fatal(str(exc))
                except BaseException:
                    # A bug (or a sys.exit) in one callback must not take the parent's I/O down.
                    traceback.print_exc()
        finally:
            self.sock = None
            close_router(router)
            self._waker.close()

    def _iterate(self, poller: zmq.Poller, sock: zmq.Socket[bytes], zap: zmq.Socket[bytes]) -> None:
        reading = not self.congested and not self._client.backlogged()
        if reading != self._reading:
            poller.modify(sock, zmq.POLLIN if reading else 0)
            self._reading = reading
        events = dict(poller.poll(self._next_timeout()))
        if self._waker.fd in events:
            self._waker.drain()
        if zap in events:
            zap_replies(zap, self._admit)
        self._run_calls()
        if self._fork_fd in events:
            self._client.on_fork_readable()
        if sock in events:
            self._read_frames(sock)
        self.timers.run_due()
        if not self.congested:  # else leave events in the outbox: emitters feel the back-pressure
            self.flush_outbox()

    def _admit(self, domain: bytes, username: bytes, password: bytes) -> bool:
        return domain == WORKERS_DOMAIN and self._client.admit(username, password)

    def _next_timeout(self) -> int | None:
        return 0 if self._calls else self.timers.next_timeout()

    def _run_calls(self) -> None:
        while self._calls:
            self._calls.popleft()()

    def _read_frames(self, sock: zmq.Socket[bytes]) -> None:
        # Asking EVENTS is far cheaper than ending each burst on a zmq.Again.
        for _ in range(_READ_BURST):
            if not cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if len(frames) != 2:
                self._client.on_stranger()
                continue  # not [identity, payload]: nothing a worker of ours sends
            self._client.on_frame(frames[0], frames[1])

    def flush_outbox(self) -> None:
        """Send the dispatched events to every worker that handles events (hub thread, not congested)."""
        items = self._client.drain_outbox()
        if self._room_waiters:
            with self.outbox_taken:
                self.outbox_taken.notify_all()
        if not items:
            return
        targets = self._client.delivery_targets()
        if not targets:
            return
        frames: list[bytes] = []
        chunk: list[bytes] = []
        size = 0
        for item in items:
            chunk.append(item)
            size += len(item)
            if size >= p.BATCH_BYTES:
                frames.append(p.encode(p.Deliver([msgspec.Raw(i) for i in chunk])))
                chunk, size = [], 0
        if chunk:
            frames.append(p.encode(p.Deliver([msgspec.Raw(i) for i in chunk])))
        for identity in targets:
            for frame in frames:
                self.send(identity, frame)

    def full(self) -> bool:
        """Whether the outbox is at its bound (the flow-control rule is in ``_flow``)."""
        items, size = self._client.outbox_load()
        return weigh(items, size) >= OUTBOX_BYTES

    @property
    def room_waiters(self) -> int:
        """Emitters waiting for room in the outbox now."""
        return self._room_waiters

    def release_waiters(self) -> None:
        """Let every emitter waiting for room go on (shutdown has begun)."""
        self.closing = True
        with self.outbox_taken:
            self.outbox_taken.notify_all()

    def wait_for_room(self) -> None:
        """Block a non-hub emitter while the outbox is full (see ``_flow`` for why this always ends)."""
        if self.closing or self.in_hub or not self.full():
            return
        with self.outbox_taken:
            self._room_waiters += 1
            try:
                while self.full() and self.thread.is_alive() and not self.closing:
                    self.outbox_taken.wait(0.1)
            finally:
                self._room_waiters -= 1

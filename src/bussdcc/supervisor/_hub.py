"""The parent's I/O thread: it alone touches the ZeroMQ socket and the fork server's reports.

Everything that changes worker state runs on this thread, either because a
frame or report arrived or because another thread queued a call with
:meth:`Hub.call_soon`; that makes supervision a single-threaded state machine.
"""

from __future__ import annotations

import heapq
import itertools
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

from ..errors import BootError
from ..kernel import protocol as p

T = TypeVar("T")

# Per-worker pipe depth in frames; with batching this bounds the parent's
# memory per worker while keeping the pipe full.
_HWM = 32
_READ_BURST = 256
_SEND_SLICE_MS = 50


class HubClient(Protocol):
    """What the hub calls back into (on the hub thread)."""

    def on_frame(self, identity: bytes, data: bytes) -> None: ...
    def on_fork_readable(self) -> None: ...
    def on_stranger(self) -> None: ...
    def on_fatal(self, reason: str) -> None: ...
    def drain_outbox(self) -> list[bytes]: ...
    def delivery_targets(self) -> list[bytes]: ...


class Timer:
    """A cancellable callback scheduled on the hub thread."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback."""
        self.cancelled = True


class Hub:
    """Owns the ROUTER socket the workers connect to."""

    def __init__(self, endpoint: str, fork_fd: int, client: HubClient) -> None:
        self.endpoint = endpoint
        self._fork_fd = fork_fd
        self._client = client
        self._calls: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._running = True
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="bussdcc-hub", daemon=True)
        self.sock: zmq.Socket[bytes] | None = None

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

    @property
    def in_hub(self) -> bool:
        """Whether the caller runs on the hub thread."""
        return threading.current_thread() is self.thread

    # ---- cross-thread calls -------------------------------------------------------

    def wake(self) -> None:
        """Make the hub loop run once more (e.g. to flush the outbox)."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the hub thread."""
        self._calls.append(fn)
        self.wake()

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` on the hub thread and return its result."""
        if self.in_hub:
            return fn()
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.call_soon(run)
        return fut.result(timeout)

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the hub thread after ``delay`` seconds (hub thread only)."""
        timer = Timer(time.monotonic() + delay, fn)
        heapq.heappush(self._timers, (timer.when, next(self._counter), timer))
        return timer

    # ---- sending (hub thread only) ---------------------------------------------------

    def send(self, identity: bytes, data: bytes, alive: Callable[[], bool]) -> bool:
        """Send to one worker, waiting while its pipe is full; False if it is gone."""
        assert self.sock is not None
        while True:
            try:
                self.sock.send_multipart([identity, data], zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    return False
                raise
            # Back-pressure: stop reading from workers until this one drains;
            # keep watching the fork server so a death still ends the wait.
            try:
                self.sock.setsockopt(zmq.SNDTIMEO, _SEND_SLICE_MS)
                self.sock.send_multipart([identity, data])
                return True
            except zmq.Again:
                self._client.on_fork_readable()
                self._run_due_timers()
                if not alive():
                    return False
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    return False
                raise
            finally:
                self.sock.setsockopt(zmq.SNDTIMEO, -1)

    # ---- the loop ---------------------------------------------------------------

    def _main(self) -> None:
        zctx = zmq.Context(io_threads=1)
        sock: zmq.Socket[bytes] = zctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.RCVHWM, _HWM)
            sock.setsockopt(zmq.SNDHWM, _HWM)
            sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            self._error = exc
            sock.close(0)
            zctx.term()
            self._ready.set()
            return
        self.sock = sock
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._fork_fd, zmq.POLLIN)
        try:
            while self._running:
                try:
                    self._iterate(poller, sock)
                except BootError as exc:  # the fork server is gone: nothing can be respawned
                    poller.unregister(self._fork_fd)
                    self._client.on_fatal(str(exc))
                except Exception:
                    # A bug in one callback must not take the parent's I/O down.
                    traceback.print_exc()
        finally:
            self.sock = None
            sock.close(0)
            zctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _iterate(self, poller: zmq.Poller, sock: zmq.Socket[bytes]) -> None:
        events = dict(poller.poll(self._next_timeout()))
        if self._wake_r in events:
            self._drain_wake()
        self._run_calls()
        if self._fork_fd in events:
            self._client.on_fork_readable()
        if sock in events:
            self._read_frames(sock)
        self._run_due_timers()
        self.flush_outbox()

    def _next_timeout(self) -> int | None:
        if self._calls:
            return 0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        while self._calls:
            self._calls.popleft()()

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.fn()

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
        """Send the dispatched events to every worker that handles events (hub thread)."""
        items = self._client.drain_outbox()
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

            def alive(identity: bytes = identity) -> bool:
                return identity in self._client.delivery_targets()

            for frame in frames:
                if not self.send(identity, frame, alive):
                    break

"""A worker's one connection to its parent: ordered, counted, batched, back-pressured."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from threading import get_ident
from time import monotonic
from typing import Any, cast

import zmq

from ..errors import ProtocolError
from ..kernel import Message
from ..kernel import protocol as p
from ..kernel._boundary import ACTIVITIES, WorkerSpec
from ..kernel._frames import ENCODE_ERRORS, ENCODER
from ._direct import DirectEndpoint

# Small high-water marks make a flooding worker block early (bounded memory on
# both sides) and make its items pile into large batches instead of frames.
_HWM = 32
_MAX_PENDING = 1024
#: Items other threads may queue before they must wait for them to be sent.
_MAX_FOREIGN = 4096
_FOREIGN_RETRY = 0.05
#: An item pushed within this many seconds of the last frame sent waits (at most this long) for
#: more to share its frame: a flood leaves in large batches, while a lone message leaves at once.
_LINGER = 0.001
_now = time.time
_encode = ENCODER.encode


class Channel:
    """Owns the worker's DEALER socket.

    The worker's main thread drives it. Other threads of the worker may
    ``push`` too: their items are numbered at once and queued; the main
    thread sends them, or, while it is busy in user code (a long ``tick``),
    the pushing thread sends them itself once the queue is long. The socket is
    only ever used under ``_io``, so one thread at a time touches it.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.zctx = zmq.Context(io_threads=1)
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, spec.identity)
        # The parent admits a connection only from the holder of a live incarnation's id and token.
        self.sock.setsockopt(zmq.PLAIN_USERNAME, spec.identity)
        self.sock.setsockopt(zmq.PLAIN_PASSWORD, spec.token)
        self.sock.setsockopt(zmq.SNDHWM, _HWM)
        self.sock.setsockopt(zmq.RCVHWM, _HWM)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(spec.endpoint)
        self._owner = threading.get_ident()
        self._name = spec.name
        self._slot = spec.slot
        self._items = spec.slots.item_counter(spec.slot)  # [0]: items numbered so far, for the parent
        self._io = threading.RLock()  # held while the socket is in use
        self._lock = threading.Lock()  # guards numbering and the foreign queue
        self._drained = threading.Condition(self._lock)
        self._seq = 0  # items numbered so far
        self._controls = 0
        self._first_pending = 1
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._foreign: list[bytes] = []
        self._foreign_controls: deque[bytes] = deque()
        #: Where replies to this worker's own device calls go (they bypass the inbox).
        self.on_reply: Callable[[p.Reply], None] | None = None
        self._congested = False
        #: When the last batch left; the thread that sends held items (started on the first hold).
        self._last_send = 0.0
        self._held = False
        self._held_event = threading.Event()
        self._sender: threading.Thread | None = None
        self._inbox: deque[p.ParentFrame] = deque()
        #: The parent confirmed it has everything (set by :meth:`bye`).
        self.acknowledged = False
        #: When to hand the host a Stop of our own (a SIGTERM the parent did not follow up).
        self._stop_at: float | None = None
        self._stop_given = False
        self._closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        #: A device's own call endpoint (see ``_direct``), once opened.
        self.direct: DirectEndpoint | None = None
        #: Where the parent's word on direct routes goes (see ``WorkerPort``).
        self.on_route: Callable[[p.Route | p.RouteEnded], None] | None = None
        #: Other sockets of this context (direct routes to devices): closed before it ends.
        self._kept: list[zmq.Socket[bytes]] = []

    def keep_socket(self, sock: zmq.Socket[bytes]) -> None:
        """Close ``sock`` with the channel (it belongs to the channel's context)."""
        self._kept.append(sock)

    def forget_socket(self, sock: zmq.Socket[bytes] | None) -> None:
        """``sock`` is closed by its owner now."""
        if sock in self._kept:
            self._kept.remove(sock)

    def poll_with(self, extra: zmq.Socket[bytes], timeout: float) -> bool:
        """:meth:`pump`, also waiting for ``extra`` to be readable (returned); the main thread only."""
        with self._io:
            self._flush(block=True)
            self._poller.register(extra, zmq.POLLIN)
            try:
                events = dict(self._poller.poll(_poll_ms(timeout)))
            finally:
                self._poller.unregister(extra)
            self._serve(events)
            return extra in events

    def open_direct(self) -> str:
        """Bind this device's call endpoint; return its address, or "" if it cannot (calls then go by the parent)."""
        if self.direct is not None:
            return self.direct.endpoint  # opened already, while the device waited at its gate
        try:
            direct = DirectEndpoint(self.zctx, self.spec)
        except (OSError, zmq.ZMQError):
            return ""  # e.g. a worker running as another user may not bind in the run directory
        with self._io:
            self.direct = direct
            self._poller.register(direct.sock, zmq.POLLIN)
            self._poller.register(direct.zap, zmq.POLLIN)
        return direct.endpoint

    def send_direct(self, peer: bytes, reply: p.Reply) -> None:
        """Answer a direct call (main thread), after everything queued before it."""
        data = p.encode(reply)
        with self._io:
            sent = self._seq
            if self._pending or self._foreign or self._foreign_controls:
                self._flush(block=True)
            if self.direct is not None:
                self.direct.send(peer, data, sent)

    def post_direct(self, peer: bytes, reply: p.Reply) -> None:
        """Answer a direct call from a call thread: the socket's holder sends it after the items queued before it."""
        data = p.encode(reply)
        if self.direct is None:
            return
        with self._lock:
            self.direct.posted.append((peer, data, self._seq))
        self._wake()

    # ---- outgoing --------------------------------------------------------------

    def emit(self, message: Message) -> None:
        """Queue ``message`` for the parent."""
        try:
            item: bytes | None = _encode(("m", message.name, message, _now(), self._name))  # an Envelope's array
        except ENCODE_ERRORS:
            item = None
        if item is None or len(item) > p.MAX_ITEM:
            item = p.encode_envelope(message, _now(), self._name)  # raises the typed error
        self.push(item)

    def set_state(self, path: str, value: Any) -> None:
        """Queue a state write for the parent."""
        self.push(p.encode_state_set(path, value))

    def delete_state(self, path: str) -> None:
        """Queue a state deletion for the parent."""
        self.push(p.encode(p.StateDelete(path)))

    def push(self, item: bytes) -> None:
        """Number and queue one encoded item; send it now if the pipe has room and no batch is filling."""
        if get_ident() != self._owner:
            self._push_foreign(item)
            return
        # ``with``, not acquire() then try: an exception from a signal handler can land as a call
        # returns, and would leave the lock held (the next push would deadlock).
        with self._io:
            pending = self._pending
            with self._lock:
                if self._foreign:
                    self._take_foreign()
                # Counted and queued with no call between them: a signal handler's exception lands
                # only as a call returns, so never between the two (a count without its item would
                # tell the parent of an item that never arrived).
                self._seq = self._items[0] = self._seq + 1
                pending.append(item)
            self._pending_bytes += len(item)
            if len(pending) >= _MAX_PENDING or self._pending_bytes >= p.BATCH_BYTES:
                self._flush(block=True)
            elif not self._congested and monotonic() - self._last_send >= _LINGER:
                self._flush(block=False)
            elif not self._held:
                self._hold()

    def _hold(self) -> None:  # with _io held
        """Have the items pending now sent within about :data:`_LINGER` even if this thread goes off into user code."""
        self._held = True
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_held, name="bussdcc-linger", daemon=True)
            self._sender.start()
        else:
            self._held_event.set()

    def _send_held(self) -> None:
        """The linger thread: send what is held once no frame has left for :data:`_LINGER` (the emitter went quiet).

        It looks without taking the socket, and takes it only if free: an emitter that is
        busy in the channel sends by itself, so the two never contend while a flood lasts.
        """
        wait = _LINGER
        while True:
            time.sleep(wait)
            wait = _LINGER
            if self._closed:
                return
            if self._pending or self._foreign:
                idle = monotonic() - self._last_send
                if idle < _LINGER and not self._congested:
                    wait = _LINGER - idle  # a frame left just now: the emitter is sending by itself
                    continue
                if not self._io.acquire(blocking=False):
                    continue  # the emitter is in the channel, which sends or holds again
                try:
                    if self._closed:
                        return
                    self._flush(block=False)
                finally:
                    self._io.release()
                if self._pending:
                    continue  # the parent is behind: try again after another linger
            with self._io:
                if self._pending or self._foreign:
                    continue  # pushed meanwhile
                self._held = False
                self._held_event.clear()
            self._held_event.wait()

    def _push_foreign(self, item: bytes) -> None:
        with self._lock:
            self._seq += 1
            self.spec.slots.write(self.spec.slot, self._seq, self._controls)
            self._foreign.append(item)
            crowded = len(self._foreign) >= _MAX_FOREIGN
        self._wake()
        while crowded:
            # Send them ourselves if the main thread is off in user code;
            # otherwise it is in the channel and the wake-up makes it drain.
            if self._io.acquire(blocking=False):
                try:
                    self._flush(block=True)
                finally:
                    self._io.release()
                return
            with self._lock:
                self._drained.wait(_FOREIGN_RETRY)
                crowded = len(self._foreign) >= _MAX_FOREIGN

    def stop_later(self, delay: float) -> None:
        """Have :meth:`wait` return a Stop in ``delay`` seconds unless the parent's comes first.

        Safe in a signal handler: it takes no lock.
        """
        if self._closed:
            return
        if self._stop_at is None:
            self._stop_at = time.monotonic() + delay
        self._wake()  # a wait() already blocking recomputes its timeout

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # the pipe is full of wake-ups already, or the channel is closing

    def beat(self) -> None:
        """Tell the parent, through shared memory, that this worker is making progress."""
        self.spec.slots.beat(self.spec.slot, time.monotonic())

    def _take_foreign(self) -> None:  # with _lock held
        for item in self._foreign:
            self._pending.append(item)
            self._pending_bytes += len(item)
        self._foreign.clear()
        self._drained.notify_all()

    def flush(self, block: bool = True) -> bool:
        """Send every queued item; return False if that would block (and ``block`` is False)."""
        with self._io:
            return self._flush(block)

    def _flush(self, block: bool) -> bool:
        if not self._flush_items(block):
            return False
        while self._foreign_controls:
            # A control frame from another thread (a call's reply) leaves after every
            # item queued before it, including those that thread pushed just before.
            if not self._flush_items(block=True):
                return False
            with self._lock:
                data = self._foreign_controls.popleft()
                self._controls += 1
                self.spec.slots.write(self.spec.slot, self._seq, self._controls)
            self._send(data, block=True)
        return True

    def _flush_items(self, block: bool) -> bool:
        with self._lock:
            if self._foreign:
                self._take_foreign()
        while self._pending:
            # One frame per BATCH_BYTES: a frame must stay far below MAX_FRAME.
            count, size = 0, 0
            for item in self._pending:
                if count and size + len(item) > p.BATCH_BYTES:
                    break
                count += 1
                size += len(item)
            chunk = self._pending[:count]
            frame = p.encode_batch(self._first_pending, chunk)
            if not self._send(frame, block):
                self._congested = True
                return False
            self._last_send = monotonic()
            self._first_pending += count
            del self._pending[:count]
            self._pending_bytes -= size
        self._congested = False
        return True

    def post_control(self, frame: p.WorkerFrame) -> None:
        """Send a control frame from any thread: after the items queued before it, by whoever holds the socket."""
        if threading.get_ident() == self._owner:
            self.send_control(frame)
            return
        data = p.encode(frame)
        with self._lock:
            self._foreign_controls.append(data)
        self._wake()

    def pump(self, timeout: float) -> None:
        """Send what is queued and read what arrives for up to ``timeout`` seconds (a caller waiting on a reply)."""
        with self._io:
            self._flush(block=True)
            self._serve(dict(self._poller.poll(_poll_ms(timeout))))

    def _serve(self, events: dict[Any, int]) -> None:
        """Act on what a poll found ready: the wake pipe, the parent's socket, the device's call endpoint."""
        if self._wake_r in events:
            self._drain_wake()
            self._flush(block=True)
        if self.sock in events:
            self._read_available()
        if self.direct is not None:
            self.direct.service(events)
            self.direct.send_posted()

    def try_pump(self, timeout: float) -> bool:
        """:meth:`pump` if no other thread holds the socket; return whether it did."""
        if not self._io.acquire(blocking=False):
            return False
        try:
            self.pump(timeout)
        finally:
            self._io.release()
        return True

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def send_control(self, frame: p.WorkerFrame) -> None:
        """Send a control frame after everything queued before it."""
        with self._io:
            self._flush(block=True)
            with self._lock:
                self._controls += 1
                self.spec.slots.write(self.spec.slot, self._seq, self._controls)
            self._send(p.encode(frame), block=True)

    def _send(self, data: bytes, block: bool) -> bool:
        try:
            self.sock.send(data, zmq.NOBLOCK)
            return True
        except zmq.Again:
            if not block:
                return False
        paused = self._pause_watch()
        try:
            # Keep reading while we wait: the parent may itself be waiting to send
            # to us, and neither side may wait on the other with its input closed.
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN | zmq.POLLOUT)
            while True:
                events = dict(poller.poll())
                if events.get(self.sock, 0) & zmq.POLLIN:
                    self._read_available()
                if events.get(self.sock, 0) & zmq.POLLOUT:
                    try:
                        self.sock.send(data, zmq.NOBLOCK)
                        return True
                    except zmq.Again:
                        continue
        finally:
            self._resume_watch(paused)

    def _pause_watch(self) -> tuple[int, float, float, float] | None:
        # Time spent waiting for a slow parent (back-pressure) is not the tick's own:
        # stop the watchdog's clock meanwhile, or a healthy worker would look hung.
        if threading.get_ident() != self._owner:
            return None
        slots, slot = self.spec.slots, self.spec.slot
        activity, since, limit = slots.activity(slot)
        if activity == "idle":
            return None
        slots.busy(slot, 0, 0.0, 0.0)
        return ACTIVITIES.index(activity), since, limit, time.monotonic()

    def _resume_watch(self, paused: tuple[int, float, float, float] | None) -> None:
        if paused is not None:
            activity, since, limit, began = paused
            self.spec.slots.busy(self.spec.slot, activity, since + (time.monotonic() - began), limit)

    @property
    def sent(self) -> int:
        """Items numbered so far (the ``last_seq`` of a Bye)."""
        return self._seq

    # ---- incoming --------------------------------------------------------------

    def _read_available(self) -> None:
        # Asking EVENTS is far cheaper than ending each read on a zmq.Again.
        while cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            data = self.sock.recv(zmq.NOBLOCK)
            try:
                frame = p.decode(data, p.PARENT_FRAMES)
                if isinstance(frame, p.Reply) and self.on_reply is not None:
                    self.on_reply(frame)
                elif isinstance(frame, p.Route | p.RouteEnded) and self.on_route is not None:
                    self.on_route(frame)
                else:
                    self._inbox.append(frame)
            except ProtocolError as exc:
                # The parent is trusted, so this is a bug; keep serving rather than die.
                print(f"bussdcc worker {self.spec.name}: dropped a bad frame: {exc}", file=sys.stderr)

    def wait(self, timeout: float | None) -> list[p.ParentFrame]:
        """Flush, then wait up to ``timeout`` seconds for frames from the parent."""
        with self._io:
            if self._inbox or (self.direct is not None and self.direct.calls):
                timeout = 0
            stop_at = None if self._stop_given else self._stop_at
            if stop_at is not None:
                left = max(0.0, stop_at - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            if self._pending or self._foreign or self._foreign_controls:
                self._flush(block=True)
            ms = None if timeout is None else _poll_ms(timeout)
            self._serve(dict(self._poller.poll(ms)))
            if not self._inbox and stop_at is None:
                return []  # the common case of a device between calls
            frames = list(self._inbox)
            self._inbox.clear()
            if not self._stop_given:
                if any(isinstance(frame, p.Stop) for frame in frames):
                    self._stop_given = True
                elif stop_at is not None and time.monotonic() >= stop_at:
                    self._stop_given = True
                    frames.append(p.Stop())
            return frames

    def await_go(self) -> bool:
        """A gated worker's wait for the parent's Go (True), or for a Stop, the parent's or a SIGTERM's (False).

        Frames other than Go that arrive meanwhile stay in the inbox, in order, for the host.
        """
        held: list[p.ParentFrame] = []
        go = False
        while not go:
            for frame in self.wait(None):
                if isinstance(frame, p.Stop):
                    return False
                if isinstance(frame, p.Go):
                    go = True
                else:
                    held.append(frame)
        self._inbox.extendleft(reversed(held))
        return True

    def bye(self, error: str | None = None, traceback: str | None = None, timeout: float = 30.0) -> bool:
        """Say goodbye after everything queued; wait until the parent has dispatched it all."""
        self.send_control(p.Bye(self.sent, error, traceback))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for frame in self.wait(left):
                if isinstance(frame, p.ByeAck):
                    self.acknowledged = True
                    return True
        return False

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket (waiting up to ``linger_ms`` to send what is queued) and its context."""
        with self._io:
            self._closed = True
            self._held_event.set()  # the linger thread sees _closed and ends
            if self.direct is not None:
                self.direct.close()
            for sock in self._kept:
                sock.close(0)
            self.sock.close(linger=linger_ms)
            self.zctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)


#: The longest single poll (ms): zmq_poll takes a C int. A longer wait returns early; callers loop.
_MAX_POLL_MS = 2**31 - 1


def _poll_ms(timeout: float) -> int:
    """``timeout`` seconds as a poll timeout in ms (a month-long Service ``interval`` overflowed a C int)."""
    ms = timeout * 1000
    return max(0, int(ms)) if ms < _MAX_POLL_MS else _MAX_POLL_MS  # inf too

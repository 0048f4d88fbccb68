"""Frames from workers: proof of identity, sequence accounting, Bye/ByeAck (hub thread).

:meth:`Ingest.apply` alone runs on the dispatch thread: it dispatches a batch's messages and
applies its state writes, in order, after the hub thread has counted them.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import partial
from time import monotonic

import msgspec

from ..errors import ProtocolError, UnknownPeer
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._books import Books
from ._cgroup import oom_counter
from ._timers import Timer
from ._workers import Incarnation, Worker

#: Frames from no verified worker are reported at once, then at most once per this many seconds.
REFUSAL_PERIOD = 1.0


class Ingest:
    """Turns each frame of a worker into counts, dispatched items, and calls to the other parts."""

    def __init__(
        self,
        books: Books,
        *,
        ready: Callable[[Worker, Incarnation], None],
        send_stop: Callable[[Worker, Incarnation], None],
        go: Callable[[Worker, Incarnation], None],
        maybe_finalize: Callable[[Worker, Incarnation], None],
        health: Callable[[Worker, Incarnation, p.Health], None] = lambda worker, inc, frame: None,
        seen: dict[tuple[str, str], float] | None = None,
    ) -> None:
        self.books = books
        #: A worker's ``health()`` result, and when a watched (worker, message name) was last sent,
        #: for the health watch (the watch's own dict: written here, O(1), only for what is watched).
        self._health = health
        self._seen: dict[tuple[str, str], float] = {} if seen is None else seen
        self._ready = ready
        self._send_stop = send_stop
        self._go = go
        #: An incarnation whose process is gone may be finalized once its last frame is in.
        self._maybe_finalize = maybe_finalize
        self._refusals_held = 0
        self._refusal_timer: Timer | None = None

    def on_stranger(self) -> None:
        """A message of other than one part arrived: no worker of ours sends that."""
        self._refuse("", "a message of other than one part from a peer: no worker of ours sends that")

    def on_frame(self, identity: bytes, data: bytes) -> None:
        """A frame from routing id ``identity``."""
        b = self.books
        entry = b._by_identity.get(identity)
        if entry is None:
            if identity in b._retired:
                b.rejected += 1  # ours, too late: already counted as lost when it ended
                return
            self._refuse("", f"a frame from routing id {identity[:40]!r}, which is no worker of this runtime")
            return
        worker, inc = entry
        try:
            frame = p.decode(data, p.WORKER_FRAMES)
        except ProtocolError as exc:
            if inc.hello:
                self._reject(worker, exc)
            else:
                inc.unverified += 1
                self._refuse(worker.name, f"an undecodable frame before a verified hello ({exc})")
            return
        if not inc.hello and not self._verified(worker, inc, frame):
            return
        match frame:
            case p.Batch():
                self._on_batch(worker, inc, frame, data)
            case p.Hello():
                inc.controls += 1
                inc.hello = True
                if inc.pid is None:  # the fork server's report may come after the worker's own word
                    inc.pid = frame.pid
                    b._by_pid[frame.pid] = (worker, inc)
                    inc.oom = oom_counter(frame.pid)
                if worker.wants_events and not inc.stop_sent and not inc.gated:
                    b.targets[identity] = worker
                if inc.stop_sent:
                    self._send_stop(worker, inc)
                elif inc.gated and inc.go_wanted:
                    self._go(worker, inc)  # boot came to its turn before its Hello
            case p.Ready():
                inc.controls += 1
                if inc.ready:
                    # Once per incarnation: each Ready hands it to the watchdog (one more entry in its
                    # heap, looked at every period for the incarnation's life) and announces it again.
                    self._reject(worker, ProtocolError("Ready was said already"))
                else:
                    inc.direct = frame.calls
                    self._ready(worker, inc)
            case p.StartFailed():
                inc.controls += 1
                inc.start_failed = frame
            case p.Reply():
                inc.controls += 1
                b.calls.on_reply(inc, frame)
            case p.Request():
                inc.controls += 1
                b.calls.on_request(inc, frame, service=worker.role == "service")
            case p.Health():
                inc.controls += 1
                self._health(worker, inc, frame)
            case p.Bye():
                inc.controls += 1
                inc.bye = frame
                self._skip_to(worker, inc, frame.last_seq + 1)
                b.targets.pop(identity, None)
                hub = b._hub()
                ack = p.encode(p.ByeAck())
                # Acknowledged once everything before it has been dispatched, not just received.
                b.dispatcher.post(lambda: hub.call_soon(lambda: hub.send(identity, ack)), 0)
        if inc.exited and not inc.finalized:
            self._maybe_finalize(worker, inc)

    def _reject(self, worker: Worker, exc: Exception) -> None:
        self.books.rejected += 1
        self.books.emit(m.FrameRejected(worker=worker.name, error=f"{type(exc).__name__}: {exc}"))

    def _verified(self, worker: Worker, inc: Incarnation, frame: p.WorkerFrame) -> bool:
        """Whether the first frame of an incarnation proves it is the process we made (else it is refused)."""
        if not isinstance(frame, p.Hello):
            # Nothing is dispatched, applied, routed or believed before the proof.
            inc.unverified += 1
            self._refuse(worker.name, f"a {type(frame).__name__} frame before a verified hello")
            return False
        if not hmac.compare_digest(frame.token, inc.token):
            inc.wrong_tokens += 1
            self._refuse(worker.name, "a hello with a wrong token")
            return False
        return True

    def admit(self, username: bytes, password: bytes) -> bool:
        """Whether a peer may complete its handshake on the workers' endpoint (asked by ZAP).

        Only a process that holds a live incarnation's routing id and its token
        may: a stranger cannot keep a connection, hence an fd of the parent.
        """
        b = self.books
        entry = b._by_identity.get(username)
        if entry is not None and hmac.compare_digest(password, entry[1].token):
            return True
        b.denied += 1
        if entry is not None:
            entry[1].denied += 1
            self._refuse(entry[0].name, "a connection with its routing id but a wrong token", frame=False)
        else:
            self._refuse("", "a connection with wrong credentials, refused at the handshake", frame=False)
        return False

    def control_denied(self, count: int) -> None:
        """``count`` connections to the control endpoint were refused at the handshake."""
        for _ in range(count):
            self._refuse("", "a control connection without the runtime's secret, refused at the handshake", frame=False)

    def _refuse(self, worker: str, error: str, frame: bool = True) -> None:
        """Count a frame no verified worker sent (or a refused connection); report the first, then a summary a period.

        A flood of junk costs a counter increment per frame, never a message each.
        """
        b = self.books
        b.rejected += 1
        if frame:
            b.refused += 1
        if self._refusal_timer is not None:
            self._refusals_held += 1
            return
        b.emit(m.FrameRejected(worker=worker, error=f"{UnknownPeer.__name__}: {error}"))
        self._refusal_timer = b._hub().call_later(REFUSAL_PERIOD, self._report_refusals)

    def _report_refusals(self) -> None:
        self._refusal_timer = None
        held, self._refusals_held = self._refusals_held, 0
        if not held:
            return
        error = (
            f"{UnknownPeer.__name__}: {held} more frames from unknown peers or before a verified hello, "
            f"or connections refused at the handshake, rejected within {REFUSAL_PERIOD:g}s"
        )
        b = self.books
        b.emit(m.FrameRejected(worker="", error=error, count=held))
        self._refusal_timer = b._hub().call_later(REFUSAL_PERIOD, self._report_refusals)

    def _on_batch(self, worker: Worker, inc: Incarnation, frame: p.Batch, data: bytes) -> None:
        items = frame.items
        first_seq = frame.first_seq
        if first_seq < inc.next_seq:
            # A worker's send can raise after its frame has left: pyzmq runs the signal handlers once
            # the C send returns, and an application's handler may raise (an alarm-based timeout,
            # Ctrl-C). The worker cannot tell, so it keeps those items and sends them again, with
            # those queued since. They are numbered: the ones received already are dropped here, and
            # only those, so every item is dispatched exactly once.
            items = items[inc.next_seq - first_seq :]
            if not items:
                return
            first_seq = inc.next_seq
            # Not the whole frame any more: the items are decoded one by one (this is rare).
            job = partial(self.apply, worker.name, items, inc.number, first_seq)
        else:
            self._skip_to(worker, inc, first_seq)
            # One job per batch, however many items: the hand-off is paid per frame, never per message.
            job = partial(self.apply_batch, worker.name, data, items, inc.number, first_seq)
        inc.next_seq += len(items)
        inc.received += len(items)
        self.books.dispatcher.post(job, len(items), len(data))

    def apply_batch(
        self, worker: str, data: bytes, raws: list[msgspec.Raw], incarnation: int = 0, first_seq: int = 0
    ) -> None:
        """Dispatch a worker's batch, its items decoded in one call, in order (dispatch thread).

        ``raws`` are the same items undecoded, numbers ``first_seq ...`` of the worker's ``incarnation``.
        """
        try:
            items = p.decode(data, p.ITEM_BATCH).items
        except ProtocolError:
            # Some item is bad: take them one at a time, so the bad one alone is rejected.
            self.apply(worker, raws, incarnation, first_seq)
            return
        b = self.books
        seen = self._seen
        dispatch_item = b.dispatch_item
        seq = first_seq
        for item, raw in zip(items, raws, strict=True):
            try:
                if type(item) is p.Envelope:
                    if seen and (worker, item.name) in seen:
                        seen[(worker, item.name)] = monotonic()
                    dispatch_item(item, bytes(raw), worker, incarnation, seq)
                elif type(item) is p.StateSet:
                    b.state.set(item.path, p.decode_value(item.value))
                else:
                    b.state.delete(item.path)  # type: ignore[union-attr]
            except BaseException as exc:  # a bad item, or a handler that raised SystemExit: the rest still goes
                b.rejected_items += 1
                b._emit_now(m.FrameRejected(worker=worker, error=f"{type(exc).__name__}: {exc}"))
            seq += 1

    def apply(self, worker: str, items: list[msgspec.Raw], incarnation: int = 0, first_seq: int = 0) -> None:
        """Dispatch a worker's messages and apply its state writes, in order (dispatch thread).

        ``items`` are numbers ``first_seq ...`` of the worker's ``incarnation``.
        """
        b = self.books
        for seq, raw in enumerate(items, first_seq):
            try:
                item = p.decode(raw, p.ITEMS)
                match item:
                    case p.Envelope():
                        seen = self._seen
                        if seen and (worker, item.name) in seen:
                            seen[(worker, item.name)] = monotonic()
                        b.dispatch_item(item, bytes(raw), worker, incarnation, seq)
                    case p.StateSet():
                        b.state.set(item.path, p.decode_value(item.value))
                    case p.StateDelete():
                        b.state.delete(item.path)
            except BaseException as exc:  # a bad item, or a handler that raised SystemExit: the rest still goes
                b.rejected_items += 1
                b._emit_now(m.FrameRejected(worker=worker, error=f"{type(exc).__name__}: {exc}"))

    def _skip_to(self, worker: Worker, inc: Incarnation, seq: int) -> None:
        # Items that never arrived are not "received": they count as lost.
        if seq > inc.next_seq:
            missing = seq - inc.next_seq
            self._reject(worker, ProtocolError(f"{missing} items never arrived (from {inc.next_seq})"))
            inc.next_seq = seq

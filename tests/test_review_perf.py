"""The per-message fast paths: lock handling, the control stream's gap counts, recorded times, the slot table."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bussdcc import Context, Message, Runtime, Service, message
from bussdcc.cli._client import Client, Streamed
from bussdcc.errors import FrameTooLarge, MalformedFrame
from bussdcc.kernel import protocol as p
from bussdcc.kernel._boundary import SlotTable
from bussdcc.kernel._event import event_at
from bussdcc.supervisor._control import ControlServer
from bussdcc.supervisor._dispatch import Dispatch
from bussdcc.supervisor._zap import close_router, open_router, zap_replies
from bussdcc.worker._channel import Channel

from ._helpers import MakeRuntime, Seq, wait_until

pytestmark = pytest.mark.timeout(120)


@dataclass(slots=True, frozen=True)
class Sized(Message):
    """The k-th message of a test, with ``pad`` to give it a size."""

    name = "test.review.sized"
    k: int
    pad: bytes = b""


class _Interrupted(Exception):
    """Raised by the test's signal handler, as KeyboardInterrupt is by Python's own SIGINT handler."""


#: Where a test's signal handler may raise: in the functions that take the locks under test, or in
#: the test's own loop. Not in the handler itself (a second signal may interrupt it inside a gc
#: callback), and not deeper: an exception between a frame sent and its bookkeeping is another
#: matter than a lock left held, which is what these tests are about.
_DISPATCH_CODE = (Dispatch.emit.__code__, Dispatch.dispatch.__code__, ControlServer.tap.__code__)
_PUSH_CODE = (Channel.push.__code__,)


def _bomb(where: tuple[CodeType, ...], emit: Callable[[Message], None], burst: int, leaked: Callable[[], bool]) -> int:
    """Emit numbered messages under SIGALRM every 137 µs, whose handler raises in ``where`` or in this loop.

    Between bursts (the timer off) ``leaked()`` looks at the locks; this goes on for 4 s, or until
    it says True (acquire-then-try leaked within a second here). Returns how many were emitted.
    """
    loop = sys._getframe().f_code  # this function's own frame: it drives the code under test
    armed = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Only in the code under test or the loop that drives it: raised anywhere else (a destructor,
        # a library's cleanup) the exception is unraisable, which is not what these tests are about.
        if armed and frame is not None and (frame.f_code is loop or frame.f_code in where):
            raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    k = 0
    try:
        deadline = time.monotonic() + 4.0
        found = False
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.000137)
        while time.monotonic() < deadline and not found:
            try:
                armed = True
                for _ in range(burst):
                    k += 1
                    emit(Sized(k))
                armed = False
            except _Interrupted:
                armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            found = leaked()
            signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.000137)
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return k


# ---- 1. explicit acquire/release on the dispatch path --------------------------------------------


def _dispatch_locks_leaked(rt: Runtime) -> tuple[bool, bool]:
    """(dispatch lock still held by this thread, control tap lock held by nobody that will release it)."""
    parts = rt._parts
    assert parts is not None
    held = rt._dispatch._lock._is_owned()  # type: ignore[attr-defined]
    tap = parts.control._tap_lock
    stuck = not tap.acquire(timeout=5.0)  # another thread taps for microseconds at most
    if not stuck:
        tap.release()
    return held, stuck


@pytest.mark.timeout(60)
def test_an_exception_from_a_signal_handler_during_emit_leaves_no_lock_held() -> None:
    # A runtime emitting on the main thread is interrupted, as Ctrl-C interrupts it, between
    # any two bytecodes. Afterwards no lock of the dispatch path may stay taken: a leaked
    # dispatch lock hangs every other thread that dispatches, a leaked tap lock the control
    # plane (status, subscriptions). The kernel's interval timer lands the signal anywhere.
    rt = Runtime(name="review-sigwin")
    rt.boot()
    leaked: tuple[bool, bool] = (False, False)

    def look() -> bool:
        nonlocal leaked
        leaked = _dispatch_locks_leaked(rt)
        return any(leaked)

    try:
        _bomb(_DISPATCH_CODE, rt.emit, 1000, look)
    finally:
        held, stuck = leaked
        while rt._dispatch._lock._is_owned():  # type: ignore[attr-defined]
            rt._dispatch._lock.release()
        if stuck and rt._parts is not None:
            rt._parts.control._tap_lock.release()  # let shutdown go through
        rt.shutdown()
    assert not held, "the dispatch lock stayed held by a thread that left emit()"
    assert not stuck, "the control tap lock stayed held after emit() was interrupted"


# ---- 6. the control stream: a gap counted where it is ----------------------------------------------


def _numbered(entry: Streamed) -> int | None:
    env = p.decode(bytes(entry.item), p.ITEMS)
    if not isinstance(env, p.Envelope) or env.name != Sized.name:
        return None
    k: int = msgspec.msgpack.decode(env.body, type=Sized).k
    return k


@contextlib.contextmanager
def _control_held(control: Any) -> Iterator[None]:
    """Hold the control thread (as a slow send would) while the body taps messages."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(60)

    control._calls.append(hold)
    control._wake()
    assert entered.wait(30)
    try:
        yield
    finally:
        release.set()


def test_a_gap_behind_a_large_message_is_reported_where_it_is() -> None:
    # A message too big for the room left in the subscriber queue is dropped; a smaller one
    # after it would still fit. Were it queued, the gap (told with the message after the
    # batch) would show up behind a message that came after the missing one.
    rt = Runtime(name="review-gap")
    got: list[tuple[int, int]] = []
    done = threading.Event()
    errors: list[BaseException] = []
    big = b"x" * (19 * 100 * 1024)  # 1.9 MiB: eight fill the 16 MiB subscriber queue, a ninth does not fit

    def follow() -> None:
        try:
            assert rt.run_dir is not None
            with Client(rt.run_dir) as client:
                for entry in client.events(0, follow=True, poll=0.2):
                    if entry is None:
                        continue
                    k = _numbered(entry)
                    if k is not None:
                        got.append((k, entry.dropped))
                    if k == 11:
                        break
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    with rt:
        parts = rt._parts
        assert parts is not None
        control = parts.control
        thread = threading.Thread(target=follow)
        thread.start()
        wait_until(lambda: control._subscribers, timeout=30, what="the subscription")
        # Hold the control thread (as a slow send would) while the burst is tapped.
        with _control_held(control):
            for k in range(1, 10):  # 1..8 are queued, 9 is dropped for want of room
                rt.emit(Sized(k, big))
            rt.emit(Sized(10))  # small: it still fits, after the gap
        wait_until(lambda: any(k == 8 for k, _ in got), timeout=30, what="the burst to arrive")
        rt.emit(Sized(11))
        assert done.wait(30)
        thread.join(30)
    assert not errors, errors
    assert [k for k, _ in got][:8] == [1, 2, 3, 4, 5, 6, 7, 8], got
    assert 9 not in dict(got), got
    previous = 0
    for k, dropped in got:  # each message says how many are missing right before it
        assert k - previous - 1 == dropped, f"{previous} → {k} said {dropped} missed: {got}"
        previous = k


@pytest.mark.timeout(60)
def test_a_new_subscriber_is_not_told_of_drops_before_it() -> None:
    # The case the change fixed: drops for the others while the queue was full, then a subscriber.
    rt = Runtime(name="review-before")
    big = b"x" * (19 * 100 * 1024)
    first: list[tuple[int, int]] = []
    second: list[tuple[int, int]] = []

    def follow(into: list[tuple[int, int]], until: int, subscribed: threading.Event) -> None:
        assert rt.run_dir is not None
        with Client(rt.run_dir) as client:
            for entry in client.events(0, follow=True, poll=0.2):
                if entry is None:
                    subscribed.set()
                    continue
                k = _numbered(entry)
                if k is not None:
                    into.append((k, entry.dropped))
                if k == until:
                    break

    with rt:
        parts = rt._parts
        assert parts is not None
        control = parts.control
        one = threading.Event()
        a = threading.Thread(target=follow, args=(first, 12, one))
        a.start()
        assert one.wait(30)
        with _control_held(control):
            for k in range(1, 11):  # 9 and 10 are dropped for the first subscriber
                rt.emit(Sized(k, big))
        wait_until(lambda: len(first) >= 8, timeout=30, what="the burst to arrive")
        two = threading.Event()
        b = threading.Thread(target=follow, args=(second, 12, two))
        b.start()
        assert two.wait(30)
        rt.emit(Sized(11))
        rt.emit(Sized(12))
        a.join(30)
        b.join(30)
    assert [k for k, _ in first] == [1, 2, 3, 4, 5, 6, 7, 8, 11, 12], first
    assert dict(first)[11] == 2, first
    assert second == [(11, 0), (12, 0)], second


# ---- 2. the recorder's publish time ---------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _datetime_ns(ts: float) -> int:
    """What the live run's Event.time says, in ns since the epoch."""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return (when - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _publish_times(stamps: list[float]) -> list[int]:
    from bussdcc.kernel._recording import _MSG_HEAD, Recorder, Recording

    pytest.importorskip("mcap")
    got: list[int] = []

    def pack(*fields: Any) -> bytes:
        got.append(fields[5])
        return _MSG_HEAD.pack(*fields)

    recorder = Recorder(Recording(path=None, snapshot=0), library="test")
    try:
        for ts in stamps:
            recorder.message(event_at(Sized(0), ts, "runtime"), 0, 0, 1, _pack=pack)
    finally:
        recorder.close()
    assert len(got) == len(stamps)
    return got


def _adversarial_stamps() -> list[float]:
    out: list[float] = []
    limit = 2.0**51 / 1e6  # where the fast path ends, in seconds
    for base in (0.0, 1.0, 1.7e9, 1.7e9 + 0.5e-6, 2.0**31, limit / 2, limit, 2.0**33, 2.5e11):
        x = base
        for _ in range(40):  # the floats right around each base, both ways
            out.append(x)
            x = math.nextafter(x, math.inf)
        x = base
        for _ in range(40):
            x = math.nextafter(x, -math.inf)
            out.append(x)
    for whole in (1, 1_700_000_000, 2_000_000_000, 2_251_799_813):  # ties and near-ties at each microsecond
        for us in (0, 1, 499_999, 500_000, 999_999):
            for half in (0.5, 0.37, 0.38, 0.13, 0.87, 0.62, 0.63):
                t = whole + (us + half) / 1e6
                out.extend((t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)))
    return [t for t in out if t > 0]


def test_publish_times_round_as_datetime_does() -> None:
    stamps = _adversarial_stamps()
    rng = __import__("random").Random(20261201)
    for _ in range(20_000):
        stamps.append(rng.uniform(0, 2.0**51 / 1e6 * 1.01))
        stamps.append(rng.uniform(1.6e9, 1.8e9))
        stamps.append(float(rng.randrange(1, 2**53)) / 2 ** rng.randrange(0, 40))
    stamps = [t for t in stamps if 0 < t < 2.5e11]
    got = _publish_times(stamps)
    wrong = [(ts, g, _datetime_ns(ts)) for ts, g in zip(stamps, got, strict=True) if g != _datetime_ns(ts)]
    assert not wrong, wrong[:10]


_FAST_LIMIT_US = 2**51
_NEAR_TIMES = st.builds(
    lambda us, frac, steps: _step((us + frac) / 1e6, steps),
    st.one_of(
        st.integers(min_value=-(10**12), max_value=10**12),
        st.integers(min_value=_FAST_LIMIT_US - 10**7, max_value=_FAST_LIMIT_US + 10**7),
        st.integers(min_value=-_FAST_LIMIT_US - 10**7, max_value=-_FAST_LIMIT_US + 10**7),
        st.integers(min_value=1_600_000_000 * 10**6, max_value=2_300_000_000 * 10**6),
    ),
    st.one_of(st.sampled_from([0.0, 0.5, 0.37, 0.63, 0.125, 0.875, 0.25, 0.75]), st.floats(0.0, 1.0)),
    st.integers(min_value=-8, max_value=8),
)


def _step(t: float, steps: int) -> float:
    for _ in range(abs(steps)):
        t = math.nextafter(t, math.inf if steps > 0 else -math.inf)
    return t


@settings(max_examples=400, deadline=None)
@given(st.lists(_NEAR_TIMES, min_size=1, max_size=50))
def test_publish_times_near_ties_and_the_fast_limit_round_as_datetime_does(stamps: list[float]) -> None:
    got = _publish_times(stamps)
    assert got == [max(0, _datetime_ns(ts)) for ts in stamps]


def test_publish_times_of_negative_and_zero_times_are_zero() -> None:
    stamps = [-1e-7, -0.4e-6, -0.6e-6, -1.0, -1.5e-6, 0.0, 1e-7, 0.4e-6, 0.6e-6]
    got = _publish_times(stamps)
    want = [max(0, _datetime_ns(ts)) for ts in stamps]
    assert got == want


# ---- 3. the slot table --------------------------------------------------------------------------


def test_slot_counts_written_through_the_view_read_back_and_the_table_closes(tmp_path: Any) -> None:
    path = tmp_path / "slots"
    writer = SlotTable(4, path)
    reader = SlotTable(4, path)  # another mapping of the same file, as a standalone worker has
    view = writer.item_counter(2)
    view[0] = 2**40 + 7
    writer.write(1, 5, 6)
    assert reader.read(2) == (2**40 + 7, 0)
    assert reader.read(1) == (5, 6)
    writer.write(2, 9, 3)  # controls written by a struct call, items by the view: both seen
    view[0] = 10
    assert reader.read(2) == (10, 3)
    writer.close()  # a view was handed out: closing must still unmap
    reader.close()
    with pytest.raises(ValueError):
        view[0] = 11


_EACH = 10_000


class EmitBothThenDie(Service):
    """Emits from its main thread and from a thread of its own at once, then dies."""

    name = "emitboth"
    interval = 3600
    restart = False

    def tick(self, ctx: Context) -> None:
        def emit_more() -> None:
            for i in range(_EACH):
                ctx.emit(Seq(i=_EACH + i, pad="y" * 50))

        other = threading.Thread(target=emit_more)
        other.start()
        for i in range(_EACH):
            ctx.emit(Seq(i=i, pad="x" * 50))
        other.join()
        os._exit(4)


def test_crash_counts_items_numbered_by_the_main_thread_and_another_alike(make_runtime: MakeRuntime) -> None:
    # The main thread's count goes through the slot's view, another thread's through a struct
    # call of both counts: after a crash the parent reads one count that holds them all.
    rt, rec = make_runtime("review-lost", EmitBothThenDie())
    (exited,) = rec.wait_for("worker.exited", timeout=60)
    ex = exited.payload
    assert isinstance(ex, message.WorkerExited)
    assert ex.emitted == 2 * _EACH
    assert ex.lost == ex.emitted - ex.dispatched
    assert len(rec.of("test.seq")) == ex.dispatched
    assert rt.stats().lost == ex.lost


# ---- 5. Dispatch.emit refuses what it cannot encode, before anyone sees it -------------------------


@dataclass(slots=True, frozen=True)
class Opaque(Message):
    """A message with a field msgpack cannot encode."""

    name = "test.review.opaque"
    thing: Any


def test_emit_refuses_oversized_and_unencodable_messages_before_anyone_sees_them() -> None:
    rt = Runtime(name="review-refuse")
    seen: list[str] = []
    rt.events.subscribe(Message, lambda evt: seen.append(evt.payload.name))
    with rt:
        before = rt.stats().dispatched
        with pytest.raises(FrameTooLarge):
            rt.emit(Sized(1, b"x" * (p.MAX_ITEM + 1)))
        with pytest.raises(MalformedFrame):
            rt.emit(Opaque(object()))
        with pytest.raises(MalformedFrame):
            rt.emit(Sized(2**70))  # over 64 bits
        assert rt.stats().dispatched == before
        assert Sized.name not in seen and Opaque.name not in seen
        rt.emit(Sized(3, b"x" * (p.MAX_ITEM - 200)))  # just under the limit: dispatched
        assert seen.count(Sized.name) == 1


def _join_linger(sender: threading.Thread) -> None:
    """Join the channel's linger thread, waking it if the signal robbed it of its wake-up."""
    sender.join(2.0)
    if sender.is_alive() and sender.ident is not None:
        # The signal may also land inside threading.Event.set() on the main thread, whose
        # Condition.notify is plain Python: a waiter taken off the list but not yet released
        # is never woken again. Release the lock it waits on (a test artefact, not a leak).
        frame = sys._current_frames().get(sender.ident)
        while frame is not None:
            waiter = frame.f_locals.get("waiter")
            if frame.f_code.co_name == "wait" and waiter is not None and waiter.locked():
                waiter.release()
                break
            frame = frame.f_back
    sender.join(10.0)


@pytest.mark.timeout(60)
def test_an_exception_from_a_signal_handler_during_a_workers_push_leaves_no_lock_held(tmp_path: Any) -> None:
    # A worker's own code may raise from a signal handler (an alarm-based timeout around a
    # tick that emits): its channel must come out of push() with no lock taken.
    import zmq

    from bussdcc.kernel._boundary import WorkerSpec

    endpoint = f"ipc://{tmp_path}/w.sock"
    # The parent's own kind of endpoint: libzmq fails every PLAIN handshake on a server whose
    # context has no ZAP handler, and then nothing would ever leave the channel, whose push
    # rightly blocks once its pipe and its pending queue are full.
    zctx, zap, router = open_router(endpoint, b"test", {})
    stop = threading.Event()
    received = [0]

    def drain() -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(zap, zmq.POLLIN)
        while not stop.is_set():
            events = dict(poller.poll(50))
            if zap in events:
                zap_replies(zap, lambda domain, user, password: (user, password) == (b"w-identity", b"w-token"))
            while router in events and router.poll(0):
                router.recv_multipart()
                received[0] += 1

    reader = threading.Thread(target=drain)
    reader.start()
    slots = SlotTable(4)
    spec = WorkerSpec("w", "service", 1, endpoint, 1, slots, os.getpid(), b"w-identity", b"w-token")
    channel = Channel(spec)
    k = 0
    while channel._sender is None:  # its linger thread started before any signal: Thread.start is not for that
        k += 1
        channel.emit(Sized(k))
    io_held = lock_stuck = False

    def look() -> bool:
        nonlocal io_held, lock_stuck
        io_held = channel._io._is_owned()  # type: ignore[attr-defined]
        lock_stuck = not channel._lock.acquire(timeout=5.0)  # the linger thread holds it for microseconds
        if not lock_stuck:
            channel._lock.release()
        return io_held or lock_stuck

    try:
        _bomb(_PUSH_CODE, channel.emit, 200, look)
    finally:
        while channel._io._is_owned():  # type: ignore[attr-defined]
            channel._io.release()
        if lock_stuck:
            channel._lock.release()
        channel.close()
        if channel._sender is not None:
            _join_linger(channel._sender)
        stop.set()
        reader.join(10)
        close_router((zctx, zap, router))
        slots.close()
    assert not io_held, "the channel's socket lock stayed held by a thread that left push()"
    assert not lock_stuck, "the channel's numbering lock stayed held after push() was interrupted"
    assert received[0] > 0, "nothing reached the router: the test did not exercise the send path"

"""A signal handler's exception in a worker's send or push: every acknowledged message arrives and is counted once."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from types import FrameType

import pytest
import zmq

from bussdcc import Context, Message, Service, message
from bussdcc.worker._channel import Channel

from ._helpers import MakeRuntime, Seq

pytestmark = pytest.mark.timeout(120)

_SECONDS = 2.0


class _Timeout(Exception):
    """What an alarm-based timeout raises in the worker's own code."""


@dataclass(slots=True, frozen=True)
class Refused(Message):
    """The numbers of the worker's emits that raised (they may or may not have been delivered)."""

    name = "test.signal_send.refused"
    emitted: int
    raised: list[int]


#: Where a test's handler raises. pyzmq runs pending signal handlers once the C send has returned,
#: sent or not: raised there, the exception leaves ``send`` with the frame already on its way to the
#: parent. In the channel's push, an item is counted and queued.
_CODE = {"send": zmq.Socket.send.__code__, "push": Channel.push.__code__}


class EmitUnderAlarms(Service):
    """Emits for a while under a fast interval timer whose handler raises inside ``where`` (see _CODE)."""

    interval = 3600
    restart = False

    def __init__(self, name: str, where: str) -> None:
        self.name = name
        self.where = where

    def tick(self, ctx: Context) -> None:
        armed = False
        code = _CODE[self.where]

        def interrupt(signum: int, frame: FrameType | None) -> None:
            if armed and frame is not None and frame.f_code is code:
                raise _Timeout

        raised: list[int] = []
        previous = signal.signal(signal.SIGALRM, interrupt)
        i = 0
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.000137)
            deadline = time.monotonic() + _SECONDS
            while time.monotonic() < deadline:
                i += 1
                try:
                    armed = True
                    ctx.emit(Seq(i=i))
                    armed = False
                except _Timeout:
                    armed = False
                    raised.append(i)
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        ctx.emit(Refused(emitted=i, raised=raised))


def test_an_exception_raised_inside_a_workers_send_loses_and_repeats_nothing(make_runtime: MakeRuntime) -> None:
    _rt, rec = make_runtime("signal-send", EmitUnderAlarms("alarmed", "send"))
    (done,) = rec.wait_for(Refused.name, timeout=30)
    refused = done.payload
    assert isinstance(refused, Refused)
    seen = [e.payload.i for e in rec.of(Seq.name) if isinstance(e.payload, Seq)]
    raised = set(refused.raised)
    assert raised, "no exception landed in a send: the test did not exercise what it is about"
    assert len(seen) == len(set(seen)), "a message was delivered twice"
    missing = set(range(1, refused.emitted + 1)) - raised - set(seen)
    assert not missing, f"{len(missing)} acknowledged messages never arrived (first {min(missing)})"
    assert not rec.of("worker.frame_rejected"), [e.payload for e in rec.of("worker.frame_rejected")]


def test_an_exception_raised_inside_a_workers_push_counts_no_item_it_did_not_queue(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("signal-push", EmitUnderAlarms("alarmed-push", "push"))
    (done,) = rec.wait_for(Refused.name, timeout=30)
    refused = done.payload
    assert isinstance(refused, Refused)
    assert refused.raised, "no exception landed in a push: the test did not exercise what it is about"
    rt.shutdown()
    (ended,) = rec.wait_for("worker.exited", timeout=30)
    assert isinstance(ended.payload, message.WorkerExited)
    # Every item the worker counted reached the parent: none is told as lost, nothing was rejected.
    assert ended.payload.lost == 0, f"{ended.payload.lost} items counted as sent never arrived"
    assert not rec.of("worker.frame_rejected"), [e.payload for e in rec.of("worker.frame_rejected")]
    seen = [e.payload.i for e in rec.of(Seq.name) if isinstance(e.payload, Seq)]
    assert len(seen) == len(set(seen)), "a message was delivered twice"
    missing = set(range(1, refused.emitted + 1)) - set(refused.raised) - set(seen)
    assert not missing, f"{len(missing)} acknowledged messages never arrived (first {min(missing)})"

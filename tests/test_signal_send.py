"""A signal handler's exception inside the worker's send: every acknowledged message arrives, once."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from types import FrameType

import pytest
import zmq

from bussdcc import Context, Message, Service

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


#: pyzmq runs pending signal handlers once the C send has returned, sent or not: raised there,
#: the exception leaves ``send`` with the frame already on its way to the parent.
_SEND_CODE = zmq.Socket.send.__code__


class EmitUnderAlarms(Service):
    """Emits for a while under a fast interval timer whose handler raises inside the channel's sends."""

    name = "alarmed"
    interval = 3600
    restart = False

    def tick(self, ctx: Context) -> None:
        armed = False

        def interrupt(signum: int, frame: FrameType | None) -> None:
            if armed and frame is not None and frame.f_code is _SEND_CODE:
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
    _rt, rec = make_runtime("signal-send", EmitUnderAlarms())
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

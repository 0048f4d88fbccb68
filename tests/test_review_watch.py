"""The watchdog's heap of due times: one entry per watched incarnation, whatever a worker sends."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bussdcc import Context, Message, Runtime, Service
from bussdcc.kernel import protocol as p
from bussdcc.supervisor._supervisor import Supervisor

from ._helpers import MakeRuntime, wait_until

pytestmark = pytest.mark.timeout(120)


def _sup(rt: Runtime) -> Supervisor:
    parts = rt._parts
    assert parts is not None
    return parts.supervisor


@dataclass(slots=True, frozen=True)
class SaidReady(Message):
    """The worker has sent its extra Ready frames."""

    name = "test.review_watch.said_ready"


class ReadyAgain(Service):
    """Says Ready again, many times, from its first tick (a buggy or hostile worker)."""

    name = "ready-again"
    interval = 3600.0
    restart = False
    times = 300

    def tick(self, ctx: Context) -> None:
        channel = ctx._calls._channel  # type: ignore[union-attr]
        for _ in range(self.times):
            channel.send_control(p.Ready())
        ctx.emit(SaidReady())


def test_a_worker_saying_ready_again_is_still_watched_once(make_runtime: MakeRuntime) -> None:
    """A worker repeating Ready was looked at by the watch once per Ready, every period, for its whole life."""
    rt, rec = make_runtime("ready-again", ReadyAgain())
    rec.wait_for(SaidReady.name, timeout=30)
    sup = _sup(rt)
    (worker,) = [w for w in sup.workers.values() if w.name == ReadyAgain.name]
    inc = worker.current
    assert inc is not None

    def entries() -> int:
        # Read on the hub thread: the heap is the hub thread's.
        parts = rt._parts
        assert parts is not None
        return parts.hub.call(lambda: sum(1 for e in sup._watchdog._due if e[3] is inc), timeout=10)

    wait_until(lambda: inc.controls >= ReadyAgain.times + 2, timeout=30, what="the extra Ready frames in")
    assert entries() <= 1, f"{entries()} heap entries for one incarnation"
    assert len(rec.of("worker.started")) == 1
    rec.wait_for("worker.frame_rejected", timeout=30)

"""The control event stream under load: each subscriber gets every message once, in order, or is told it missed it.

The tap that feeds subscribers runs on the dispatch path without a lock shared with the
control thread; these tests subscribe while a worker floods, so a subscription lands
between any two steps of a tap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import msgspec
import pytest

from bussdcc import Context, Message, Runtime, Service
from bussdcc.cli._client import Client, Streamed
from bussdcc.kernel import protocol as p

from ._helpers import wait_until

pytestmark = pytest.mark.timeout(120)


@dataclass(slots=True, frozen=True)
class Numbered(Message):
    """The k-th message of the flood."""

    name = "test.numbered"
    k: int


class Flood(Service):
    """Emits numbered messages, a burst a tick, ticks back to back (a Stop is taken between two)."""

    name = "flood"
    interval = 0.001

    def __init__(self) -> None:
        self.k = 0

    def tick(self, ctx: Context) -> None:
        for _ in range(500):
            self.k += 1
            ctx.emit(Numbered(self.k))


def _number(entry: Streamed) -> int | None:
    env = p.decode(bytes(entry.item), p.ITEMS)
    if not isinstance(env, p.Envelope) or env.name != Numbered.name:
        return None
    k: int = msgspec.msgpack.decode(env.body, type=Numbered).k
    return k


def _follow(rt: Runtime, backlog: int, wanted: int) -> list[tuple[int, int]]:
    """Subscribe with ``backlog``; return (k, messages missed just before it) until ``wanted`` numbered ones came."""
    assert rt.run_dir is not None
    got: list[tuple[int, int]] = []
    with Client(rt.run_dir) as client:
        for entry in client.events(backlog, follow=True, poll=0.2):
            if entry is None:
                continue
            k = _number(entry)
            if k is not None:
                got.append((k, entry.dropped))
            elif entry.dropped:
                got.append((-1, entry.dropped))  # a gap before a message of another kind
            if len(got) >= wanted:
                break
    return got


def _check_once_in_order(got: list[tuple[int, int]]) -> None:
    numbered = [(k, dropped) for k, dropped in got if k >= 0]
    assert numbered, "no numbered message arrived"
    carried = 0
    previous: int | None = None
    for k, dropped in got:
        if k < 0:
            carried += dropped
            continue
        if previous is not None:
            # Every message between two that arrived was either sent or counted as missed, never both.
            assert k > previous, f"{k} after {previous}: a duplicate or a message out of order"
            assert k - previous - 1 == dropped + carried, f"{previous} → {k} with {dropped + carried} said missed"
        previous, carried = k, 0


@pytest.mark.parametrize("backlog", [0, 7, 1000])
def test_subscribing_during_a_flood_gives_each_message_once_or_counts_it(backlog: int) -> None:
    flood = Flood()
    rt = Runtime(name="stream-flood")
    rt.register_service(flood)
    with rt:
        wait_until(lambda: rt.stats().dispatched > 5000, timeout=60, what="the flood to begin")
        for _ in range(4):  # one subscription after another, each at another point of some tap
            _check_once_in_order(_follow(rt, backlog, 3000))


def test_subscribing_beside_a_subscriber_gives_each_message_once_or_counts_it() -> None:
    # With one subscriber there, messages are queued between its sends: a new subscriber
    # must get those in its backlog only, not again from the queue.
    flood = Flood()
    rt = Runtime(name="stream-two")
    rt.register_service(flood)
    first: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            first.extend(_follow(rt, 50, 40_000))
        except BaseException as exc:
            errors.append(exc)

    with rt:
        wait_until(lambda: rt.stats().dispatched > 5000, timeout=60, what="the flood to begin")
        thread = threading.Thread(target=follow)
        thread.start()
        try:
            for _ in range(6):
                _check_once_in_order(_follow(rt, 1000, 2000))
        finally:
            thread.join(90)
    assert not errors, errors
    _check_once_in_order(first)

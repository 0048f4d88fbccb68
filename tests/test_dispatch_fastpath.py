"""The per-message path: one encode per envelope, a batch decoded in one call, held items leave on their own."""

from __future__ import annotations

import datetime as dt
import time

import msgspec
import pytest

from bussdcc import Context, Event, Runtime, Service, message
from bussdcc.kernel import protocol as p
from bussdcc.kernel._event import event_at, event_ts

from ._helpers import MakeRuntime, Recorder, Seq, joined_worker


def test_an_envelope_is_the_same_bytes_as_the_struct_it_stands_for() -> None:
    msg = Seq(i=7, pad="é")
    ts = time.time()
    data = p.encode_envelope(msg, ts, "w")
    assert data == p.encode(p.Envelope(msg.name, msgspec.Raw(p.encode(msg)), ts, "w"))
    env = p.decode(data, p.ITEMS)
    assert isinstance(env, p.Envelope) and p.decode_message(env.name, env.body) == msg


@pytest.mark.parametrize("count", [0, 1, 15, 16, 300, 70_000])
def test_a_batch_joined_by_hand_is_the_same_bytes_as_the_struct(count: int) -> None:
    items = [p.encode_envelope(Seq(i=i), 1.5, "w") for i in range(count)]
    for first in (1, 127, 128, 2**40):
        data = p.encode_batch(first, items)
        assert data == p.encode(p.Batch(first, [msgspec.Raw(i) for i in items]))
        typed = p.decode(data, p.ITEM_BATCH)
        assert typed.first_seq == first and [bytes(p.encode(i)) for i in typed.items] == items


def test_an_event_from_a_timestamp_equals_one_from_its_datetime_and_stays_immutable() -> None:
    ts = time.time()
    lazy = event_at(Seq(i=1), ts, "w")
    eager = Event(Seq(i=1), dt.datetime.fromtimestamp(ts, tz=dt.UTC), "w")
    assert lazy == eager and hash(lazy) == hash(eager) and repr(lazy) == repr(eager)
    assert lazy.time.tzinfo is dt.UTC and event_ts(lazy) == ts and event_ts(eager) == pytest.approx(ts)
    assert type(lazy) is Event and lazy.name == "test.seq" and lazy.source == "w"
    for field in ("payload", "time", "source", "_ts"):
        with pytest.raises(AttributeError):
            setattr(lazy, field, None)
        with pytest.raises(AttributeError):
            setattr(eager, field, None)
    assert Event(Seq(i=2), eager.time).source == "runtime"


def test_a_bad_item_in_a_batch_is_rejected_alone_and_the_rest_keeps_its_order() -> None:
    rec = Recorder()
    rt = Runtime(name="fastbatch")
    rt.register_process(rec)
    with rt, joined_worker(rt, "batcher") as peer:
        good = [p.encode_envelope(Seq(i=i), time.time(), "batcher") for i in range(4)]
        # One frame: two messages, an item that is no item, a state write, two more messages.
        items = [*good[:2], b"\x93\x01\x02\x03", p.encode_state_set("fast/x", 5), *good[2:]]
        peer.sock.send(p.encode_batch(1, items))
        seqs = rec.wait_for("test.seq", count=4)
        assert [e.payload.to_dict()["i"] for e in seqs] == [0, 1, 2, 3]
        assert all(e.source == "batcher" for e in seqs)
        (rejected,) = rec.wait_for("worker.frame_rejected")
        assert isinstance(rejected.payload, message.FrameRejected)
        assert rejected.payload.worker == "batcher" and rejected.payload.error.startswith("MalformedFrame")
        assert rt.state.get("fast/x") == 5
        # A whole good batch after it: decoded in one call, in order.
        peer.sock.send(p.encode_batch(7, [p.encode_envelope(Seq(i=i), time.time(), "batcher") for i in range(4, 8)]))
        seqs = rec.wait_for("test.seq", count=8)
        assert [e.payload.to_dict()["i"] for e in seqs] == list(range(8))


COUNT = 500


class Burst(Service):
    """Emits a few messages back to back, then stays in user code far longer than any test waits."""

    name = "burst"
    interval = 3600
    tick_timeout = 600.0
    stop_timeout = 0.5
    kill_timeout = 0.5

    def tick(self, ctx: Context) -> None:
        for i in range(COUNT):
            ctx.emit(Seq(i=i))
        time.sleep(120)


def test_messages_held_for_a_batch_leave_while_the_emitter_stays_in_user_code(make_runtime: MakeRuntime) -> None:
    # Those that follow a frame within the linger are held for a batch, and must
    # leave on their own (not when the tick ends, two minutes later).
    _rt, rec = make_runtime("burst", Burst())
    seqs = rec.wait_for("test.seq", count=COUNT, timeout=30)
    assert [e.payload.to_dict()["i"] for e in seqs] == list(range(COUNT))

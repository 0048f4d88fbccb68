"""A recorded message's publish time is its Event's time to the microsecond, however the time was made."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from mcap.records import Channel
from mcap.records import Message as McapMessage
from mcap.stream_reader import StreamReader

from bussdcc import Message
from bussdcc.kernel._event import event_at
from bussdcc.kernel._recording import Recorder, Recording

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(slots=True, frozen=True)
class Stamp(Message):
    """A message to stamp."""

    name = "test.stamp"
    k: int


# Times a runtime meets (1970 .. 2200), with and without the half-microsecond ties that
# float rounding gets wrong.
_TIMES = st.one_of(
    st.floats(min_value=0.0, max_value=7.3e9, allow_nan=False),
    st.integers(min_value=0, max_value=7_300_000_000 * 10**6).map(lambda us: (us + 0.5) / 1e6),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_TIMES, min_size=1, max_size=40))
def test_publish_time_is_the_events_own_time_to_the_microsecond(tmp_path_factory: object, times: list[float]) -> None:
    assert hasattr(tmp_path_factory, "mktemp")
    path = Path(tmp_path_factory.mktemp("stamps")) / "t.mcap"
    recorder = Recorder(Recording(path=str(path)), library="test")
    try:
        for k, ts in enumerate(times):
            recorder.message(event_at(Stamp(k), ts, "here"))
    finally:
        recorder.close()
    ours: set[int] = set()
    stamped: list[int] = []
    with path.open("rb") as f:
        for r in StreamReader(f).records:
            if isinstance(r, Channel) and r.topic == Stamp.name:
                ours.add(r.id)
            elif isinstance(r, McapMessage) and r.channel_id in ours:
                stamped.append(r.publish_time)
    expected = [(dt.datetime.fromtimestamp(ts, dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1) * 1000 for ts in times]
    assert stamped == expected

"""EventBus, StateStore and clocks, in one process."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

import pytest

from bussdcc import Event, EventBus, ManualClock, Message, StateStore, SystemClock, message
from bussdcc.errors import StatePathError
from bussdcc.kernel import ClockProtocol


def _evt(msg: Message) -> Event[Message]:
    return Event(msg, dt.datetime.now(dt.UTC), "test")


@dataclass(slots=True, frozen=True)
class Ping(Message):
    name = "test.kernel_ping"
    n: int


class TestEventBus:
    def test_typed_subscribe_and_cancel(self) -> None:
        bus = EventBus()
        pings: list[Event[Ping]] = []
        allm: list[Event[Message]] = []
        sub = bus.subscribe(Ping, pings.append)
        bus.subscribe(Message, allm.append)
        bus.publish(_evt(Ping(1)))
        bus.publish(_evt(message.SystemReload()))
        assert [e.payload.n for e in pings] == [1] and len(allm) == 2
        sub.cancel()
        sub.cancel()
        bus.publish(_evt(Ping(2)))
        assert len(pings) == 1 and len(allm) == 3

    def test_handlers_run_in_the_publishers_thread(self) -> None:
        bus = EventBus()
        seen: list[int] = []
        bus.subscribe(Ping, lambda e: seen.append(threading.get_ident()))
        t = threading.Thread(target=bus.publish, args=(_evt(Ping(1)),))
        t.start()
        t.join()
        assert seen == [t.ident]

    def test_subscriber_failure_is_isolated_and_reported(self) -> None:
        errors: list[Message] = []
        bus = EventBus(on_error=errors.append)
        after: list[Event[Ping]] = []

        def boom(e: Event[Ping]) -> None:
            raise ValueError("bad handler")

        bus.subscribe(Ping, boom)
        bus.subscribe(Ping, after.append)
        bus.publish(_evt(Ping(1)))
        assert len(after) == 1
        (err,) = errors
        assert isinstance(err, message.EventSubscriberError)
        assert err.event == "test.kernel_ping" and "bad handler" in err.error and err.traceback

    def test_no_report_for_failures_on_error_level_events(self) -> None:
        errors: list[Message] = []
        bus = EventBus(on_error=errors.append)

        def boom(e: Event[Message]) -> None:
            raise ValueError

        bus.subscribe(Message, boom)
        bus.publish(_evt(message.ServiceError(service="s", error="x")))
        assert errors == []

    def test_concurrent_subscribe_and_publish(self) -> None:
        bus = EventBus()
        count = [0]
        lock = threading.Lock()

        def inc(e: Event[Ping]) -> None:
            with lock:
                count[0] += 1

        subs = [bus.subscribe(Ping, inc) for _ in range(10)]

        def churn() -> None:
            for _ in range(200):
                bus.subscribe(Ping, inc).cancel()

        t = threading.Thread(target=churn)
        t.start()
        for i in range(200):
            bus.publish(_evt(Ping(i)))
        t.join()
        assert count[0] >= 2000 and len(bus) == len(subs)


class TestStateStore:
    def test_dot_paths(self) -> None:
        s = StateStore()
        s.set("system.clock.uptime", 42)
        assert s.get("system.clock.uptime") == 42
        assert s.get("system.clock") == {"uptime": 42}
        assert s.get("system.missing", "d") == "d"
        assert s.snapshot() == {"system": {"clock": {"uptime": 42}}}

    def test_subtree_copies_do_not_alias(self) -> None:
        s = StateStore()
        s.set("a.b", 1)
        sub = s.get("a")
        sub["b"] = 99
        assert s.get("a.b") == 1

    @pytest.mark.parametrize("path", ["", ".", "a..b", ".a", "a."])
    def test_bad_paths(self, path: str) -> None:
        with pytest.raises(StatePathError):
            StateStore().set(path, 1)

    def test_conflicts_are_clear_errors(self) -> None:
        s = StateStore()
        s.set("a.b", 1)
        with pytest.raises(StatePathError, match=r"crosses the leaf value at 'a\.b'"):
            s.set("a.b.c", 2)
        with pytest.raises(StatePathError, match="holds a subtree"):
            s.set("a", 5)
        assert s.get("a.b.c") is None and s.get("a.b") == 1

    def test_update_is_atomic(self) -> None:
        s = StateStore()

        def bump() -> None:
            for _ in range(1000):
                s.update("n", lambda v: v + 1, default=0)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert s.get("n") == 4000

    def test_delete_and_observer(self) -> None:
        seen: list[tuple[str, object]] = []
        s = StateStore(on_set=lambda p, v: seen.append((p, v)))
        s.set("a.b", 1)
        s.update("a.c", lambda v: 2)
        assert seen == [("a.b", 1), ("a.c", 2)]
        assert s.delete("a.b") and not s.delete("a.b") and not s.delete("x.y")
        assert s.get("a") == {"c": 2}

    def test_a_refusing_observer_prevents_the_write(self) -> None:
        def refuse(path: str, value: object) -> None:
            raise ValueError("no")

        s = StateStore(on_set=refuse)
        with pytest.raises(ValueError):
            s.set("a.b", 1)
        with pytest.raises(ValueError):
            s.update("a.c", lambda v: 1)
        assert s.get("a.b") is None and s.get("a.c") is None


class TestClocks:
    def test_system_clock(self) -> None:
        c = SystemClock()
        assert isinstance(c, ClockProtocol)
        assert c.now_utc().tzinfo is not None
        a = c.monotonic()
        assert c.monotonic() >= a and c.uptime() >= 0
        cancel = threading.Event()
        cancel.set()
        assert c.sleep(30, cancel=cancel) is True
        assert c.sleep(0) is False

    def test_manual_clock_moves_only_when_advanced(self) -> None:
        c = ManualClock()
        assert isinstance(c, ClockProtocol)
        t0 = c.now_utc()
        woke = threading.Event()

        def sleeper() -> None:
            c.sleep(10)
            woke.set()

        th = threading.Thread(target=sleeper)
        th.start()
        c.advance(5)
        assert not woke.wait(0.05)
        c.advance(5)
        assert woke.wait(5)
        th.join()
        assert c.monotonic() == 10 and c.now_utc() - t0 == dt.timedelta(seconds=10)
        with pytest.raises(ValueError):
            c.advance(-1)

    def test_manual_clock_sleep_cancel(self) -> None:
        c = ManualClock()
        cancel = threading.Event()
        cancel.set()
        assert c.sleep(100, cancel=cancel) is True

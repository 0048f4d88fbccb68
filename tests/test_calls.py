"""Calls to a device's methods: typed results, each error kind, routing from every kind of caller."""

from __future__ import annotations

import asyncio
import os
import threading

import msgspec
import pytest

from bussdcc import Context, DeviceHandle, Event, Message, Process, Runtime, Service
from bussdcc.errors import (
    CallArgumentError,
    DeviceCrashed,
    DeviceError,
    DeviceTimeout,
    DeviceUnavailable,
    RegistrationError,
    UnknownDevice,
    UnknownMethod,
)
from bussdcc.kernel import protocol as p

from ._devices import Answer, Motor, PooledMotor, Reading, Relay, Target
from ._helpers import Echo, Ping, Pong, Recorder, Seq, joined_worker, wait_until


def _runtime(name: str, *devices: Motor | Relay) -> Runtime:
    rt = Runtime(name=name)
    for dev in devices or (Motor(id="axis-1"),):
        rt.attach_device(dev)
    return rt


def test_a_call_runs_in_the_device_process_and_returns_typed_results() -> None:
    with _runtime("calls-typed") as rt:
        motor = rt.device(Motor, "axis-1")
        assert isinstance(motor, DeviceHandle)
        reached: float = motor.call(Motor.move, 12.5, speed=2.0)
        assert reached == 25.0 and isinstance(reached, float)
        assert motor.call(Motor.move, 3) == 3.0
        aimed = motor.call(Motor.aim, Target(1.0, 2.0, "home"), scale=3.0)
        assert aimed == Target(3.0, 6.0, "HOME") and isinstance(aimed, Target)
        reading = motor.call(Motor.read, 4)
        assert isinstance(reading, Reading) and reading.channel == 4 and reading.value == 0.4
        assert reading.pid not in (0, os.getpid())
        assert reading.pid == next(w.pid for w in rt.workers() if w.name == "axis-1")
        pong = motor.call(Motor.echo, Ping(n=41))  # the project's Messages travel too
        assert isinstance(pong, Ping) and pong.n == 42
        assert motor.options(timeout=1.0).call(Motor.pid) == reading.pid


def test_acall_from_asyncio() -> None:
    with _runtime("calls-async") as rt:
        motor = rt.device(Motor, "axis-1")

        async def main() -> list[float]:
            one = await motor.acall(Motor.move, 12.5)
            many = await asyncio.gather(*(motor.acall(Motor.move, float(i), speed=2.0) for i in range(20)))
            with pytest.raises(DeviceError):
                await motor.acall(Motor.fail, "async")
            with pytest.raises(DeviceTimeout):
                await motor.options(timeout=0.2).acall(Motor.nap, 2.0)
            return [one, *many]

        results = asyncio.run(main())
        assert results == [12.5, *(2.0 * i for i in range(20))]


def test_a_device_that_raises_gives_a_device_error_with_its_type_message_and_traceback() -> None:
    with _runtime("calls-raise") as rt:
        motor = rt.device(Motor, "axis-1")
        with pytest.raises(DeviceError) as info:
            motor.call(Motor.fail, "jammed")
        err = info.value
        assert err.remote_type == "ValueError" and err.remote_message == "jammed"
        assert "raise ValueError(why)" in err.remote_traceback and "in fail" in err.remote_traceback
        assert err.device == "axis-1" and err.method == "fail"
        assert motor.call(Motor.move, 1.0) == 1.0, "the device keeps serving"


def test_a_timed_out_call_raises_device_timeout_and_its_late_reply_reaches_nobody() -> None:
    with _runtime("calls-late") as rt:
        motor = rt.device(Motor, "axis-1")
        with pytest.raises(DeviceTimeout):  # not the nap's answer: the caller stopped waiting first
            motor.options(timeout=0.3).call(Motor.nap, 1.0, tag="late")
        # The next calls queue behind the slow one and get their own answers, never "late".
        assert [motor.call(Motor.nap, 0.0, tag=f"call-{i}") for i in range(5)] == [f"call-{i}" for i in range(5)]
        wait_until(lambda: rt.stats().late_replies >= 1, what="the late reply to be dropped")


def test_unknown_device_ids_and_classes_are_refused_with_the_names_that_exist() -> None:
    with _runtime("calls-unknown", Motor(id="axis-1"), Relay(id="relay-1")) as rt:
        with pytest.raises(UnknownDevice) as info:
            rt.device(Motor, "axis-9")
        assert isinstance(info.value, LookupError) and info.value.available == ("axis-1", "relay-1")
        assert "axis-1" in str(info.value)
        with pytest.raises(UnknownDevice):
            rt.device(Motor, "relay-1")  # a Relay is not a Motor


@pytest.mark.parametrize("method", ["_secret", "connect", "attach", "set_online", "__init__", "nope"])
def test_only_public_methods_of_the_device_class_are_callable(method: str) -> None:
    with _runtime("calls-methods") as rt:
        motor = rt.device(Motor, "axis-1")
        fn = getattr(Motor, method, lambda self: None)
        with pytest.raises(UnknownMethod) as info:
            motor.call(fn)
        assert isinstance(info.value, LookupError) and "move" in info.value.available
        assert not {"connect", "attach", "_secret", "set_online"} & set(info.value.available)
        # The parent refuses it too, whoever sends it: a worker's raw request is checked by no handle.
        with joined_worker(rt, "solo") as worker:
            refused = worker.request(p.Request(1, "axis-1", method, msgspec.Raw(b"\x90"), msgspec.Raw(b"\x80"), 5.0))
            assert refused.failure is not None and refused.failure.kind == "unknown_method"
            assert "move" in refused.failure.available
            unknown = worker.request(p.Request(2, "axis-9", "move", msgspec.Raw(b"\x90"), msgspec.Raw(b"\x80"), 5.0))
            assert unknown.failure is not None and unknown.failure.kind == "unknown_device"
            assert unknown.failure.available == ("axis-1",)


def test_an_argument_that_cannot_be_encoded_fails_in_the_caller_before_anything_is_sent() -> None:
    with _runtime("calls-encode") as rt:
        motor = rt.device(Motor, "axis-1")
        with pytest.raises(CallArgumentError) as info:
            motor.call(Motor.move, object())  # type: ignore[arg-type]
        assert isinstance(info.value, TypeError) and "move" in str(info.value)
        with pytest.raises(CallArgumentError):
            motor.call(Motor.aim, Target(1, 2), scale=threading.Lock())  # type: ignore[arg-type]
        assert motor.call(Motor.count) == 0, "nothing reached the device"
        with pytest.raises(CallArgumentError, match="cannot be sent"):
            motor.call(Motor.unencodable)
        with pytest.raises(CallArgumentError, match="cannot be sent"):
            motor.call(Motor.twin)
        with pytest.raises(CallArgumentError, match="over the"):
            motor.call(Motor.huge, 3 * 1024 * 1024)
        with pytest.raises(CallArgumentError, match="over the"):
            motor.call(Motor.move, [1.0] * 1_000_000)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            motor.options(timeout=float("inf"))
        with pytest.raises(CallArgumentError):
            motor.call(Motor.read, "seven")  # type: ignore[arg-type]
        assert motor.call(Motor.move, 2.0) == 2.0


def test_calls_before_boot_and_after_shutdown_are_unavailable() -> None:
    rt = _runtime("calls-down")
    motor = rt.device(Motor, "axis-1")
    with pytest.raises(DeviceUnavailable):
        motor.call(Motor.move, 1.0)
    with rt:
        assert motor.call(Motor.move, 1.0) == 1.0
    with pytest.raises(DeviceUnavailable):  # at once: a wait for the hour would fail on the test's timeout
        motor.options(timeout=3600.0).call(Motor.move, 1.0)


def test_eight_threads_calling_at_once_are_served_one_at_a_time_in_arrival_order() -> None:
    with _runtime("calls-order") as rt:
        motor = rt.device(Motor, "axis-1")
        got: dict[int, list[int]] = {}

        def caller(c: int) -> None:
            got[c] = [motor.call(Motor.record, c, i) for i in range(40)]

        threads = [threading.Thread(target=caller, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        history = motor.call(Motor.history)
        assert len(history) == 8 * 40
        for c in range(8):
            assert [i for who, i in history if who == c] == list(range(40)), "each caller's order kept"
            assert got[c] == sorted(got[c])
        assert motor.call(Motor.peak) == 1, "never two calls at once"


def test_services_and_threads_calling_one_device_at_once_keep_each_callers_order() -> None:
    from ._devices import Recorders

    rec = Recorder()
    rt = _runtime("calls-mixed")
    rt.register_process(rec)
    for caller in (10, 11):
        rt.register_service(Recorders(f"recorder-{caller}", caller, 30))
    with rt:
        motor = rt.device(Motor, "axis-1")
        threads = [
            threading.Thread(target=lambda c=c: [motor.call(Motor.record, c, i) for i in range(30)]) for c in (0, 1)
        ]
        rt.emit(Ping(n=0))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        answers = rec.wait_for("test.answer", count=2, timeout=30)
        assert sorted(a.payload.to_dict()["value"] for a in answers) == ["True", "True"]
        history = motor.call(Motor.history)
        assert len(history) == 4 * 30
        for caller in (0, 1, 10, 11):
            assert [i for who, i in history if who == caller] == list(range(30))
        assert motor.call(Motor.peak) == 1


def test_a_device_with_concurrency_runs_calls_side_by_side() -> None:
    with _runtime("calls-pool", PooledMotor(id="axis-1")) as rt:
        motor = rt.device(PooledMotor, "axis-1")
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(motor.call(PooledMotor.nap, 0.3, tag=str(i))))
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [str(i) for i in range(8)]
        assert 1 < motor.call(PooledMotor.peak) <= 4


def test_different_devices_serve_in_parallel() -> None:
    with _runtime("calls-parallel", Motor(id="axis-1"), Motor(id="axis-2")) as rt:
        spans: dict[str, tuple[float, float]] = {}

        def call(dev: str) -> None:
            spans[dev] = rt.device(Motor, dev).call(Motor.span, 0.5)

        threads = [threading.Thread(target=call, args=(d,)) for d in ("axis-1", "axis-2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        (a0, a1), (b0, b1) = spans["axis-1"], spans["axis-2"]
        assert a0 < b1 and b0 < a1, "the two calls overlapped in time"


def test_a_slow_device_never_blocks_the_dispatch_of_messages() -> None:
    rec = Recorder()
    rt = _runtime("calls-slow")
    rt.register_process(rec)
    rt.register_service(Echo())
    with rt:
        motor = rt.device(Motor, "axis-1")
        done = threading.Event()

        def slow() -> None:
            motor.call(Motor.nap, 3.0)
            done.set()

        caller = threading.Thread(target=slow)
        caller.start()
        for n in range(20):
            rt.emit(Ping(n=n))
        rec.wait_for("test.pong", count=20)
        assert not done.is_set(), "every pong came back while the call was still running"
        caller.join(10)
        assert done.is_set()
        assert [e.payload.n for e in rec.of("test.pong") if isinstance(e.payload, Pong)] == list(range(20))


def test_a_service_calls_a_device_through_the_parent() -> None:
    from ._devices import Operator

    rec = Recorder()
    rt = _runtime("calls-service")
    rt.register_process(rec)
    rt.register_service(Operator())
    with rt:
        rt.emit(Ping(n=6))
        (evt,) = rec.wait_for("test.answer")
        assert isinstance(evt.payload, Answer)
        reached, channel, device_pid, failed, service_pid = evt.payload.value.split("|")
        assert reached == "12.0" and channel == "7" and failed == "DeviceError"
        pids = {w.name: w.pid for w in rt.workers()}
        assert int(device_pid) == pids["axis-1"] and int(service_pid) == pids["operator"]
        assert len({int(device_pid), int(service_pid), os.getpid()}) == 3
        (moved,) = rec.wait_for("test.answer", lambda e: getattr(e.payload, "who", "") == "operator-async")
        assert isinstance(moved.payload, Answer) and moved.payload.value == "6.0,7.0,8.0,9.0"


def test_a_device_calls_another_device() -> None:
    with _runtime("calls-d2d", Motor(id="axis-1"), Relay(id="relay-1")) as rt:
        assert rt.device(Relay, "relay-1").call(Relay.ask_motor, 2.0) == 6.0
        assert rt.device(Relay, "relay-1").call(Relay.switch, True) is True


def test_a_process_reacting_to_a_worker_message_can_call_a_device() -> None:
    # Messages from workers are dispatched on the dispatch thread: the hub thread carries the replies meanwhile.
    outcome: list[object] = []

    class Commander(Process):
        name = "commander"

        def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
            if isinstance(evt.payload, Pong) and evt.source == "echo":
                motor = ctx.device(Motor, "axis-1", wait=True)
                outcome.append(motor.call(Motor.move, float(evt.payload.n), speed=2.0))
                try:
                    motor.options(timeout=3600.0).call(Motor.segfault)
                except DeviceCrashed as exc:
                    outcome.append(exc.reason)
                outcome.append(threading.current_thread().name)

    rec = Recorder()
    rt = _runtime("calls-hub")
    rt.register_process(Commander())
    rt.register_process(rec)
    rt.register_service(Echo())
    with rt:
        for n in range(3):
            rt.emit(Ping(n=n))  # each Pong comes from a worker
        # Each crash is seen at once: a wait for the hour's deadline would time this out.
        wait_until(lambda: len(outcome) == 9, what="the commander's calls", timeout=30)
        assert outcome[0::3] == [0.0, 2.0, 4.0]
        assert outcome[1::3] == ["killed by SIGSEGV"] * 3
        assert outcome[2::3] == ["bussdcc-dispatch"] * 3
        # Everything the workers sent meanwhile was dispatched, in order.
        pongs = [e.payload.n for e in rec.of("test.pong") if isinstance(e.payload, Pong)]
        assert pongs == [0, 1, 2]
        rec.wait_for("worker.exited", count=3)
        assert rt.device(Motor, "axis-1", wait=True).call(Motor.move, 1.0) == 1.0


def test_while_a_process_waits_on_a_slow_device_other_callers_are_served() -> None:
    state: dict[str, bool] = {"started": False, "finished": False}

    class Commander(Process):
        name = "commander"

        def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
            if isinstance(evt.payload, Pong) and evt.source == "echo":
                state["started"] = True
                ctx.device(Motor, "axis-1").call(Motor.nap, 2.0)
                state["finished"] = True

    rt = _runtime("calls-hub-busy", Motor(id="axis-1"), Motor(id="axis-2"))
    rt.register_process(Commander())
    rt.register_service(Echo())
    with rt:
        rt.emit(Ping(n=1))
        wait_until(lambda: state["started"], what="the commander's slow call")
        assert rt.device(Motor, "axis-2").call(Motor.move, 3.0) == 3.0
        assert not state["finished"], "served while the hub thread waited on axis-1"
        wait_until(lambda: state["finished"], what="the slow call to end")


class Chatter(Service):
    """Emits a numbered stream, steadily."""

    name = "chatter"
    interval = 0.005

    def start(self, ctx: Context) -> None:
        self.i = 0

    def tick(self, ctx: Context) -> None:
        ctx.emit(Seq(i=self.i))
        self.i += 1


def test_a_handler_waiting_on_a_device_loses_nothing_and_blocks_no_other_caller() -> None:
    # A handler runs under the dispatch lock; the hub thread, which routes the replies,
    # must never wait for that lock, whoever holds it and however long.
    answers: list[str] = []

    class Caller(Process):
        name = "caller"

        def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
            motor = ctx.device(Motor, "axis-1", timeout=5.0)
            if isinstance(evt.payload, Ping):  # on the emitting thread
                answers.append(motor.call(Motor.nap, 0.05, tag=f"ping{evt.payload.n}"))
            elif isinstance(evt.payload, Seq) and evt.payload.i == 3:  # on the dispatch thread
                answers.append(motor.call(Motor.nap, 0.5, tag="seq3"))

    rec = Recorder()
    rt = _runtime("calls-handlers", Motor(id="axis-1"))
    rt.register_process(Caller())
    rt.register_process(rec)
    rt.register_service(Chatter())
    with rt:
        for n in range(5):
            rt.emit(Ping(n=n))  # each handler call waits while the chatter keeps emitting
        seqs = rec.wait_for("test.seq", count=200, timeout=30)
        assert [e.payload.to_dict()["i"] for e in seqs[:200]] == list(range(200))
        assert {"ping0", "ping4", "seq3"} <= set(answers)
        assert rt.stats().rejected == 0 and rt.stats().lost == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_device_concurrency_must_be_a_positive_int(bad: object) -> None:
    dev = Motor(id="axis-1")
    dev.concurrency = bad  # type: ignore[misc,assignment]
    with pytest.raises(RegistrationError, match="concurrency"):
        Runtime(name="calls-bad-pool").attach_device(dev)


def test_calls_in_flight_at_once_run_in_arrival_order() -> None:
    async def many(motor: DeviceHandle[Motor]) -> list[int]:
        # All 300 are submitted before the first answer can come back: only the device's
        # queue orders them, and it must keep the order they arrived in.
        return await asyncio.gather(*(motor.acall(Motor.record, 0, i) for i in range(300)))

    with _runtime("calls-arrival") as rt:
        motor = rt.device(Motor, "axis-1", timeout=30.0)
        assert asyncio.run(many(motor)) == list(range(1, 301))
        assert motor.call(Motor.history) == [(0, i) for i in range(300)]


def test_a_backlog_of_calls_to_a_slow_device_does_not_hold_up_dispatch() -> None:
    async def backlog(motor: DeviceHandle[Motor]) -> list[str]:
        return await asyncio.gather(*(motor.acall(Motor.nap, 0.002) for _ in range(1500)))

    rec = Recorder()
    rt = _runtime("calls-backlog")
    rt.register_process(rec)
    rt.register_service(Chatter())
    with rt:
        motor = rt.device(Motor, "axis-1", timeout=60.0)
        flood = threading.Thread(target=lambda: asyncio.run(backlog(motor)), name="test-flood")
        flood.start()
        try:
            # ~3 s of calls queue for the device; the chatter's stream keeps being dispatched.
            wait_until(lambda: rt.stats().calls_in_flight > 500, what="a backlog")
            seen = len(rec.of("test.seq"))
            rec.wait_for("test.seq", count=seen + 50, timeout=30.0)
            assert rt.stats().calls_in_flight > 100, "the backlog was still there meanwhile"
        finally:
            flood.join(60)
        assert not rec.of("worker.hung") and [w.incarnation for w in rt.workers()] == [1, 1]


class Burst(Service):
    """Emits 20,000 messages in one tick: far more than dispatch keeps in hand."""

    name = "burst"
    interval = 3600.0

    def tick(self, ctx: Context) -> None:
        for i in range(20_000):
            ctx.emit(Seq(i=i))


def test_a_handler_calling_a_device_behind_a_backlog_gets_its_answer() -> None:
    answers: list[float] = []

    class Caller(Process):
        name = "caller"

        def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
            if isinstance(evt.payload, Seq) and evt.payload.i in (0, 10_000):
                # An hour: the answer must come from the device, never from a deadline running out.
                answers.append(ctx.device(Motor, "axis-1", timeout=3600.0).call(Motor.move, 1.0))

    rec = Recorder()
    rt = _runtime("calls-backlog-handler")
    rt.register_process(Caller())
    rt.register_process(rec)
    rt.register_service(Burst())
    with rt:
        rec.wait_for("test.seq", lambda e: e.payload.to_dict()["i"] == 19_999, timeout=60)
        assert answers == [1.0, 1.0]

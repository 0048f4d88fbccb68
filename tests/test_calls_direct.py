"""Direct calls: the parent's threads and routed Services reach a device over its own endpoint, not the hub."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable

import msgspec
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from bussdcc import Context, Event, Message, Runtime, Service
from bussdcc.errors import DeviceCrashed
from bussdcc.kernel import protocol as p
from bussdcc.kernel._calls import CALLS_USER, call_key
from bussdcc.supervisor._direct import DirectCalls

from ._devices import Answer, Motor
from ._helpers import MakeRuntime, Ping, wait_until


def _direct(rt: Runtime) -> DirectCalls:
    parts = rt._parts
    assert parts is not None
    return parts.supervisor.calls.direct


def _endpoints(rt: Runtime) -> list[str]:
    assert rt.run_dir is not None
    return sorted(name for name in os.listdir(rt.run_dir) if re.fullmatch(r"c[0-9]+\.[0-9]+", name))


def test_a_thread_of_the_parent_calls_the_device_over_its_own_endpoint(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("direct-parent", Motor(id="axis-1"))
    motor = rt.device(Motor, "axis-1", timeout=30.0)
    pid = motor.call(Motor.pid)
    line = _direct(rt).lines["axis-1"]
    assert line.inc.pid == pid and line.idle, "the call went over a pooled socket of the line"
    (first,) = _endpoints(rt)
    assert motor.call(Motor.move, 2.0, speed=3.0) == 6.0
    os.kill(pid, signal.SIGKILL)
    rec.wait_for("worker.exited", lambda e: e.payload.to_dict()["pid"] == pid, timeout=30)
    new_pid = motor.options(wait=True).call(Motor.pid)  # through the hub while it restarts, then direct
    assert new_pid != pid
    wait_until(lambda: "axis-1" in _direct(rt).lines, what="the new incarnation's line")
    assert motor.call(Motor.pid) == new_pid
    # The dead incarnation's socket file was removed; the new one has its own.
    assert first not in _endpoints(rt) and len(_endpoints(rt)) == 1


def _refused(endpoint: str, password: bytes | None) -> None:
    """Connect as a stranger and wait until the device refused the handshake."""
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if password is not None:
            sock.setsockopt(zmq.PLAIN_USERNAME, CALLS_USER)
            sock.setsockopt(zmq.PLAIN_PASSWORD, password)
        monitor = sock.get_monitor_socket()
        sock.connect(endpoint)
        args, kwargs = p.encode([99, 0]), p.encode({})
        sock.send(p.encode(p.Call(1, "record", msgspec.Raw(args), msgspec.Raw(kwargs))))
        failed = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        failed |= zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        while True:
            assert monitor.poll(30_000), "the device never answered the handshake"
            event = recv_monitor_message(monitor)["event"]
            assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, "a stranger got in"
            if event & failed:
                break
        sock.disable_monitor()
        monitor.close(0)
    finally:
        sock.close(0)
        zctx.term()


def test_a_stranger_cannot_call_a_device_over_its_endpoint(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("direct-stranger", Motor(id="axis-1"))
    motor = rt.device(Motor, "axis-1", timeout=30.0)
    motor.call(Motor.count)
    endpoint = _direct(rt).lines["axis-1"].endpoint
    _refused(endpoint, b"not the key")
    _refused(endpoint, call_key(b"another incarnation's secret"))
    _refused(endpoint, None)  # no PLAIN at all
    assert motor.call(Motor.history) == [], "no stranger's call ran"
    assert motor.call(Motor.record, 1, 0) == 1


class Caller(Service):
    """On each Ping: its pid, then a long nap it announces (which the test cuts short by killing the device)."""

    name = "caller"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if not isinstance(evt.payload, Ping):
            return
        motor = ctx.device(Motor, "axis-1", timeout=3600.0, wait=True)  # an hour: the crash must end it
        ctx.emit(Answer(who="caller", value=f"pid:{motor.call(Motor.pid)}"))
        try:
            motor.call(Motor.nap, 3600.0, tag=f"announce:{evt.payload.n}")
            outcome = "no error"
        except DeviceCrashed as exc:
            outcome = f"DeviceCrashed:{exc.reason}:{exc.device}.{exc.method}"
        except Exception as exc:
            outcome = type(exc).__name__
        ctx.emit(Answer(who="caller", value=outcome))


@pytest.mark.timeout(120)
def test_a_service_calls_the_device_straight_and_its_crash_fails_the_call_at_once(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("direct-service", Motor(id="axis-1"), Caller())

    def answers() -> list[str]:
        return [e.payload.to_dict()["value"] for e in rec.of("test.answer") if e.payload.to_dict()["who"] == "caller"]

    def announced(n: int) -> Callable[[Event[Message]], bool]:
        return lambda e: e.payload.to_dict()["value"] == f"announce:{n}"

    def crashed() -> bool:
        return answers()[-1:] == ["DeviceCrashed:killed by SIGKILL:axis-1.nap"]

    for round_ in (1, 2):
        rt.emit(Ping(n=round_))
        rec.wait_for("test.answer", announced(round_), timeout=30)
        line = _direct(rt).lines["axis-1"]
        caller = next(w for w in rt.workers() if w.name == "caller")
        holders = {bytes(h) for h in line.holders}
        assert len(holders) == 1, "the Service was told the device's line: its nap went straight there"
        pid = line.inc.pid
        assert pid is not None and f"pid:{pid}" in answers()
        os.kill(pid, signal.SIGKILL)
        wait_until(crashed, timeout=30, what="the call to fail with the crash")
        assert caller.incarnation == 1, "the Service itself carried on"
        # The next round waits for the respawn (through the parent), then goes straight to the new incarnation.


def test_a_direct_reply_never_overtakes_what_the_call_emitted(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("direct-order", Motor(id="axis-1"))
    motor = rt.device(Motor, "axis-1", timeout=30.0)
    motor.call(Motor.count)
    inc = _direct(rt).lines["axis-1"].inc
    for i in range(20):
        before = inc.next_seq
        assert motor.call(Motor.nap, 0.0, tag=f"announce:{i}") == f"announce:{i}"  # emits, then returns
        assert inc.next_seq > before, "the parent had the call's message when its caller got the reply"
    rec.wait_for("test.answer", count=20, timeout=30)

"""Exception text is arbitrary: error reports stay encodable, bounded, and nobody misses anything for it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bussdcc import Context, Device, Event, Interface, Message, Process, Runtime, Service, ThreadedRuntime
from bussdcc.errors import CallArgumentError, DeviceError, MalformedFrame, ProtocolError
from bussdcc.kernel import protocol as p
from bussdcc.kernel._text import MAX_TEXT, safe_text

from ._cli import bussdcc
from ._helpers import MakeRuntime, Ping, Recorder, Seq, wait_until

#: What os.fsdecode makes of a device path that is not UTF-8: a lone surrogate.
BAD = os.fsdecode(b"/dev/tty\xff")
ESCAPED = "/dev/tty\\udcff"
#: An event whose envelope just fits the item limit: no error report can carry it along.
BIG_PAD = p.MAX_ITEM - 64 * 1024


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---- the helper ---------------------------------------------------------------------------


#: Any character, lone surrogates (which text strategies leave out by default) often among them.
_CHARS = st.one_of(
    st.characters(exclude_categories=()),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.sampled_from("x\U0001f600"),
)


@settings(max_examples=300)
@given(st.text(alphabet=_CHARS, max_size=3000), st.integers(min_value=64, max_value=2000))
@example("a\udcff" * 2000, 100)
@example("\U0001f600" * 5000, 64)
@example("x" * 64, 64)
def test_safe_text_makes_any_text_encodable_and_bounded(text: str, limit: int) -> None:
    out = safe_text(text, limit)
    assert _encodable(out)
    assert len(out) <= limit
    assert safe_text(out, limit) == out  # already safe: kept as it is
    if len(text) <= limit and _encodable(text):
        assert out is text
    if len(out) < len(text) or not _encodable(text):
        assert out != text


def test_safe_text_escapes_surrogates_and_marks_what_it_cut() -> None:
    assert safe_text(f"cannot open {BAD}") == f"cannot open {ESCAPED}"
    huge = "x" * 20_000_000
    out = safe_text(huge)
    assert len(out) <= MAX_TEXT and out.startswith("xxxx")
    assert out.endswith(f"... [truncated {20_000_000 - out.index('...')} chars]")


def test_error_reports_are_made_safe_wherever_they_are_built_or_decoded() -> None:
    from bussdcc import message

    err = message.ProcessError(process="p", error=BAD, traceback="t" * 10_000_000)
    assert err.error == ESCAPED and len(err.traceback or "") <= MAX_TEXT
    frame = p.StartFailed(BAD, BAD)
    assert p.decode(p.encode(frame), p.WORKER_FRAMES) == p.StartFailed(ESCAPED, ESCAPED)
    assert p.Failure("error", BAD, remote_message=BAD).remote_message == ESCAPED


def test_an_unencodable_value_is_a_protocol_error_not_a_unicode_error() -> None:
    with pytest.raises(ProtocolError):
        p.encode(BAD)
    with pytest.raises(ProtocolError):
        p.encode({BAD: 1})
    with pytest.raises(ProtocolError):
        p.encode(2**70)


# ---- the parent: Processes, Interfaces, subscribers ------------------------------------


@dataclass(slots=True, frozen=True)
class Note(Message):
    """A message that carries text."""

    name = "test.hardening.note"
    text: str


class Opener(Process):
    """Fails on every Ping and Seq the way a driver fails to open an odd device path."""

    def __init__(self, name: str) -> None:
        self.name = name

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            raise OSError(f"cannot open {BAD}")
        if isinstance(evt.payload, Seq):
            raise ValueError("z" * 20_000_000)


class OpenerInterface(Interface, Opener):
    """The same, as an Interface."""


@pytest.mark.parametrize("kind", ["process", "interface"])
def test_a_handler_raising_unencodable_or_huge_text_hides_the_event_from_nobody(kind: str) -> None:
    rec = Recorder()
    rt = Runtime(name=f"text-{kind}")
    if kind == "process":
        rt.register_process(Opener("opener"))
    else:
        rt.register_interface(OpenerInterface("opener"))
    rt.register_process(rec)
    with rt:
        rt.emit(Ping(n=1))  # the emitter gets no error for someone else's failure
        rec.wait_for("test.ping")
        (err,) = rec.wait_for(f"{kind}.error", lambda e: e.payload.to_dict()["evt"] is not None)
        report = err.payload.to_dict()
        assert report[kind] == "opener"
        assert ESCAPED in (report["traceback"] or "") and _encodable(report["traceback"] or "")
        # An event so large that no report can carry it along, and a 20 MB message.
        rt.emit(Seq(i=1, pad="p" * BIG_PAD))
        rec.wait_for("test.seq")
        (big,) = rec.wait_for(f"{kind}.error", lambda e: "zzz" in e.payload.to_dict()["error"])
        report = big.payload.to_dict()
        assert "truncated" in report["error"] and len(report["error"]) <= MAX_TEXT
        assert len(report["traceback"] or "") <= MAX_TEXT
        rt.emit(Ping(n=2))  # and dispatch goes on as before
        rec.wait_for("test.ping", lambda e: e.payload.to_dict()["n"] == 2)


def test_a_subscriber_raising_unencodable_text_hides_the_event_from_nobody() -> None:
    rec = Recorder()
    seen: list[int] = []

    def bad(evt: Event[Ping]) -> None:
        raise OSError(f"cannot open {BAD}")

    def good(evt: Event[Ping]) -> None:
        seen.append(evt.payload.n)

    rt = Runtime(name="text-subscriber")
    rt.register_process(rec)
    rt.events.subscribe(Ping, bad)
    rt.events.subscribe(Ping, good)
    with rt:
        rt.emit(Ping(n=7))
        assert seen == [7]
        rec.wait_for("test.ping")
        (err,) = rec.wait_for("event.subscriber_error")
        assert ESCAPED in (err.payload.to_dict()["traceback"] or "")


class Noter(Process):
    """Emits a Note with the text it is given on each Ping; keeps what the emit raised."""

    name = "noter"

    def __init__(self) -> None:
        self.refused: list[BaseException] = []

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            try:
                ctx.emit(Note(text=BAD))
            except Exception as exc:
                self.refused.append(exc)


def test_a_message_with_unencodable_text_is_refused_to_its_emitter_only() -> None:
    noter, rec = Noter(), Recorder()
    rt = Runtime(name="text-emit")
    rt.register_process(noter)
    rt.register_process(rec)
    with rt:
        with pytest.raises(ProtocolError):
            rt.emit(Note(text=BAD))
        rt.emit(Ping(n=1))
        rec.wait_for("test.ping")
        assert [type(exc) for exc in noter.refused] == [MalformedFrame]
        assert "test.hardening.note" not in rec.names()
        rt.emit(Note(text="fine"))
        rec.wait_for("test.hardening.note")


class BadStart(Process):
    """A Process whose start and stop fail with an odd path."""

    name = "bad-start"

    def start(self, ctx: Context) -> None:
        raise OSError(f"cannot open {BAD}")

    def stop(self, ctx: Context) -> None:
        raise OSError(f"cannot close {BAD}")


def test_a_receiver_failing_to_start_or_stop_with_unencodable_text_is_reported() -> None:
    rec = Recorder()
    rt = Runtime(name="text-start")
    rt.register_process(rec)
    rt.register_process(BadStart())
    with rt:
        (err,) = rec.wait_for("process.error")
        assert ESCAPED in (err.payload.to_dict()["traceback"] or "")
        assert rt.booted
    assert "runtime.shutdown" in rec.names()
    stops = [e for e in rec.of("process.error") if "cannot close" in (e.payload.to_dict()["traceback"] or "")]
    assert len(stops) == 1


# ---- workers ---------------------------------------------------------------------------


class Ticker(Service):
    """Raises on every tick: an odd path, or a 20 MB message."""

    interval = 0.05

    def __init__(self, name: str, size: int = 0) -> None:
        self.name = name
        self.size = size

    def tick(self, ctx: Context) -> None:
        if self.size:
            raise ValueError("x" * self.size)
        raise OSError(f"cannot open {BAD}")


class Listener(Service):
    """Raises on every event it handles, with an odd path."""

    name = "listener"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping | Seq):
            raise OSError(f"cannot open {BAD}")


def _pid_of(rt: Runtime, name: str) -> int | None:
    return {w.name: w.pid for w in rt.workers()}.get(name)


@pytest.mark.timeout(120)
def test_a_service_raising_unencodable_or_huge_text_is_reported_and_keeps_running(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("text-service", Ticker("odd"), Ticker("huge", size=20_000_000), Listener())
    pids = {name: _pid_of(rt, name) for name in ("odd", "huge", "listener")}
    assert all(pids.values())
    odd = rec.wait_for("service.error", lambda e: e.source == "odd", count=3, timeout=30)
    assert all(ESCAPED in e.payload.to_dict()["error"] for e in odd)
    assert all(ESCAPED in (e.payload.to_dict()["traceback"] or "") for e in odd)
    huge = rec.wait_for("service.error", lambda e: e.source == "huge", count=3, timeout=60)
    for evt in huge:
        report = evt.payload.to_dict()
        assert "truncated" in report["error"] and len(report["error"]) <= MAX_TEXT
        assert len(report["traceback"] or "") <= MAX_TEXT
    rt.emit(Ping(n=1))
    (heard,) = rec.wait_for("service.error", lambda e: e.source == "listener")
    assert heard.payload.to_dict()["evt"] is not None and ESCAPED in heard.payload.to_dict()["error"]
    # An event too large to travel back inside a report: reported without it.
    rt.emit(Seq(i=1, pad="p" * BIG_PAD))
    rec.wait_for("service.error", lambda e: e.source == "listener", count=2)
    rt.emit(Ping(n=2))
    rec.wait_for("service.error", lambda e: e.source == "listener", count=3)
    # Nobody crashed for it: the same processes, never respawned.
    assert {name: _pid_of(rt, name) for name in pids} == pids
    assert not rec.of("worker.exited")


class GivesUp(Ticker):
    """Temporary: its first failing tick ends it, and its goodbye carries the error."""

    restart = False


def test_a_temporary_service_whose_tick_raises_such_text_says_goodbye_with_it(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("text-bye", GivesUp("once"))
    (exited,) = rec.wait_for("worker.exited", timeout=30)
    report = exited.payload.to_dict()
    assert report["cause"] == "error" and ESCAPED in report["reason"], report
    (failure,) = rec.wait_for("service.failure")
    assert ESCAPED in failure.payload.to_dict()["error"]
    assert ESCAPED in (failure.payload.to_dict()["traceback"] or "")


class Port(Device):
    """A device that fails the way drivers of odd device paths do."""

    kind = "port"

    def open(self) -> None:
        raise OSError(f"cannot open {BAD}")

    def flood(self) -> None:
        raise ValueError("y" * 20_000_000)

    def path(self) -> str:
        return BAD

    def blob(self) -> str:
        return "b" * 30_000_000

    def pid(self) -> int:
        return os.getpid()

    def same(self, text: str) -> str:
        return text


@pytest.mark.timeout(120)
def test_a_device_raising_or_returning_such_text_fails_that_call_only(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("text-device", Port(id="port"))
    port = rt.device(Port, "port", timeout=60.0)
    pid = port.call(Port.pid)
    with pytest.raises(DeviceError) as raised:
        port.call(Port.open)
    assert raised.value.remote_type == "OSError" and ESCAPED in raised.value.remote_message
    assert ESCAPED in raised.value.remote_traceback and ESCAPED in str(raised.value)
    with pytest.raises(DeviceError) as flooded:
        port.call(Port.flood)
    assert "truncated" in flooded.value.remote_message and len(flooded.value.remote_message) <= MAX_TEXT
    assert port.call(Port.pid) == pid
    with pytest.raises(CallArgumentError):
        port.call(Port.path)
    assert port.call(Port.pid) == pid
    with pytest.raises(CallArgumentError):
        port.call(Port.blob)
    with pytest.raises(CallArgumentError):
        port.call(Port.same, BAD)  # refused before it is sent
    assert port.call(Port.pid) == pid
    assert not rec.of("worker.exited") and not rec.of("device.failed")


class Unplugged(Device):
    """Cannot connect: its device path is not UTF-8."""

    kind = "port"
    restart = False

    def connect(self) -> None:
        raise OSError(f"cannot open {BAD}")


def test_a_device_failing_to_connect_with_such_text_reports_start_failed(make_runtime: MakeRuntime) -> None:
    _, rec = make_runtime("text-connect", Unplugged(id="tty"))
    (exited,) = rec.wait_for("worker.exited")
    report = exited.payload.to_dict()
    assert report["cause"] == "start_failed", report
    assert ESCAPED in report["reason"]
    (failed,) = rec.wait_for("device.failed")
    assert ESCAPED in failed.payload.to_dict()["error"]
    assert ESCAPED in (failed.payload.to_dict()["traceback"] or "")


def test_a_control_call_to_a_method_raising_such_text_gets_one_clear_line() -> None:
    rt = ThreadedRuntime(name="text-control")
    rt.attach_device(Port(id="port"))
    rt.start(timeout=30)
    try:
        done = bussdcc("call", "port", "open", "-r", rt.name)
        assert done.returncode != 0
        assert ESCAPED in done.stderr and "Traceback" not in done.stderr
        done = bussdcc("call", "port", "path", "-r", rt.name)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        done = bussdcc("call", "port", "pid", "-r", rt.name)
        assert done.returncode == 0, done.stderr
    finally:
        rt.stop(timeout=30)


class Noisy(Service):
    """Writes bytes that are not UTF-8 to its stdout."""

    name = "noisy"
    interval = 3600.0

    def start(self, ctx: Context) -> None:
        os.write(1, b"odd \xff\xfe bytes\n")
        os.write(1, b"after\n")


def test_worker_output_that_is_not_utf8_reaches_the_parent(capfd: pytest.CaptureFixture[str]) -> None:
    rt = ThreadedRuntime(name="text-output")
    rt.register_service(Noisy())
    rt.start(timeout=30)
    try:
        pid = _pid_of(rt, "noisy")
        seen: list[str] = []

        def shown() -> bool:
            seen.append(capfd.readouterr().out)
            return f"[noisy {pid}] after" in "".join(seen)

        wait_until(shown, what="the worker's lines")
        assert f"[noisy {pid}] odd \ufffd\ufffd bytes" in "".join(seen).splitlines()
    finally:
        rt.stop(timeout=30)

"""Health that knows the data: ``expect`` on what a worker emits, its own ``health()``, ``on_unhealthy``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bussdcc import Context, Device, Event, Message, Runtime, Service, WorkerState, message
from bussdcc.cli._config import load_system
from bussdcc.errors import ConfigError, ProtocolError, RegistrationError
from bussdcc.kernel import protocol as p
from bussdcc.kernel._components import OnUnhealthy

from ._helpers import MakeRuntime, Recorder, first_incarnation


@dataclass(slots=True, frozen=True)
class Reading(Message):
    """What the test workers promise to emit."""

    name = "test.health.reading"
    pid: int


class Flow(Service):
    """Emits a Reading every tick while the file ``gate`` exists."""

    interval = 0.05
    backoff_initial = 0.05

    def __init__(self, name: str = "flow", gate: str = "") -> None:
        self.name = name
        self.gate = gate

    def tick(self, ctx: Context) -> None:
        if self.gate and os.path.exists(self.gate):
            ctx.emit(Reading(pid=os.getpid()))


class Checked(Service):
    """Emits a Reading every tick; its ``health()`` does what the file ``mode`` says."""

    interval = 0.05
    health_interval = 0.05
    health_timeout = 2.0  # generous: a loaded machine must not make a healthy check look hung
    on_unhealthy: OnUnhealthy = "report"

    def __init__(self, name: str = "checked", mode: str = "") -> None:
        self.name = name
        self.mode = mode

    def _mode(self) -> str:
        try:
            return Path(self.mode).read_text()
        except OSError:
            return "ok"

    def tick(self, ctx: Context) -> None:
        ctx.emit(Reading(pid=os.getpid()))

    def health(self) -> bool | str:
        mode = self._mode()
        if mode == "false":
            return False
        if mode == "reason":
            return "sensor cold"
        if mode == "raise":
            raise RuntimeError("boom")
        while mode == "hang":  # hangs until the test lets it go
            time.sleep(0.05)
            mode = self._mode()
        return True


class Probe(Device):
    """A device whose ``health()`` fails in its first incarnation only."""

    def health(self) -> bool | str:
        if first_incarnation(str(self.config)):
            return "first incarnation: unwell"
        return True


class Unwell(Device):
    """A device that answers calls but always says it is unwell."""

    health_interval = 0.05
    on_unhealthy: OnUnhealthy = "report"

    def pid(self) -> int:
        return os.getpid()

    def health(self) -> bool | str:
        return "calibration drifted"


class Steady(Service):
    """A plain service for the TOML tests."""

    interval = 1.0


def _is(name: str, **fields: Any) -> Any:
    def where(evt: Event[Message]) -> bool:
        data = evt.payload.to_dict()
        return all(data[k] == v for k, v in fields.items())

    return where


def _status(rt: Runtime, name: str) -> Any:
    (status,) = [w for w in rt.workers() if w.name == name]
    return status


def _readings(rec: Recorder, pid: int) -> int:
    return sum(1 for e in rec.of("test.health.reading") if e.payload.to_dict()["pid"] == pid)


# ---- expectations ------------------------------------------------------------------------


def test_a_worker_that_stops_emitting_is_reported_and_restarted(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    svc = Flow("flow", str(gate))
    svc.expect = {"test.health.reading": 2.0}
    rt, rec = make_runtime("health-expect", svc)
    rt.wait_for_worker("flow", WorkerState.RUNNING)
    pid = _status(rt, "flow").pid
    rec.wait_for("test.health.reading", _is("x", pid=pid), count=3)
    gate.unlink()  # the data stops flowing
    (unhealthy,) = rec.wait_for("worker.unhealthy", _is("x", pid=pid))
    assert isinstance(unhealthy.payload, message.WorkerUnhealthy)
    assert unhealthy.payload.worker == "flow" and unhealthy.payload.action == "restart"
    assert unhealthy.payload.what == "expect test.health.reading"
    assert "no test.health.reading for" in unhealthy.payload.reason
    gate.touch()  # the next incarnation will emit again
    (exited,) = rec.wait_for("worker.exited", _is("x", pid=pid))
    assert isinstance(exited.payload, message.WorkerExited)
    assert exited.payload.cause == "unhealthy" and exited.payload.abnormal
    assert "unhealthy: expect test.health.reading" in exited.payload.reason
    (backoff,) = rec.wait_for("worker.backoff", _is("x", pid=pid))
    assert backoff.payload.to_dict()["attempt"] == 1
    (started,) = rec.wait_for("worker.started", _is("x", incarnation=2))
    new_pid = started.payload.to_dict()["pid"]
    assert new_pid != pid
    rec.wait_for("test.health.reading", _is("x", pid=new_pid), count=3)
    status = _status(rt, "flow")
    assert status.state in (WorkerState.RUNNING, WorkerState.UNHEALTHY)
    assert status.restarts == 1 and status.pid == new_pid


def test_a_worker_that_never_delivers_is_restarted_within_the_intensity_then_given_up(
    make_runtime: MakeRuntime,
) -> None:
    svc = Flow("mute")  # no gate: it never emits
    svc.expect = {"test.health.reading": 0.3}
    svc.max_restarts = 2
    svc.restart_window = 600.0
    rt, rec = make_runtime("health-intensity", svc)
    (gave_up,) = rec.wait_for("worker.gave_up", timeout=30)
    assert "2 restarts within 600s" in gave_up.payload.to_dict()["reason"]
    assert "unhealthy" in gave_up.payload.to_dict()["reason"]
    exits = rec.of("worker.exited")
    assert [e.payload.to_dict()["cause"] for e in exits] == ["unhealthy"] * 3
    assert len({e.payload.to_dict()["pid"] for e in exits}) == 3  # three processes, one after another
    assert [e.payload.to_dict()["attempt"] for e in rec.of("worker.backoff")] == [1, 2]  # the backoff grows
    assert len(rec.of("worker.unhealthy")) == 3
    rt.wait_for_worker("mute", WorkerState.FAILED)


def test_report_only_keeps_the_worker_unhealthy_until_the_data_flows_again(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    svc = Flow("reported", str(gate))
    svc.expect = {"test.health.reading": 2.0}
    svc.on_unhealthy = "report"
    rt, rec = make_runtime("health-report", svc)
    rt.wait_for_worker("reported", WorkerState.RUNNING)
    pid = _status(rt, "reported").pid
    rec.wait_for("test.health.reading", _is("x", pid=pid), count=3)
    gate.unlink()
    (unhealthy,) = rec.wait_for("worker.unhealthy")
    assert unhealthy.payload.to_dict()["action"] == "report"
    assert unhealthy.payload.to_dict()["pid"] == pid
    rt.wait_for_worker("reported", WorkerState.UNHEALTHY)
    assert _status(rt, "reported").pid == pid  # not restarted
    gate.touch()
    (healthy,) = rec.wait_for("worker.healthy")
    assert isinstance(healthy.payload, message.WorkerHealthy)
    assert healthy.payload.pid == pid and healthy.payload.unhealthy_for > 0
    rt.wait_for_worker("reported", WorkerState.RUNNING)
    status = _status(rt, "reported")
    assert status.pid == pid and status.restarts == 0
    assert not rec.of("worker.exited")
    # It was never killed for it, and stops like any running worker.
    rt.stop_worker("reported")
    (exited,) = rec.wait_for("worker.exited")
    assert exited.payload.to_dict()["cause"] == "stopped"


# ---- health() ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("false", "health() returned False"),
        ("reason", "sensor cold"),
        ("raise", "health() raised RuntimeError('boom')"),
        ("hang", "health() gave no answer for"),
    ],
)
def test_a_failing_health_check_is_reported_and_recovers(
    make_runtime: MakeRuntime, tmp_path: Path, mode: str, reason: str
) -> None:
    switch = tmp_path / "mode"
    svc = Checked("checked", str(switch))
    rt, rec = make_runtime(f"health-{mode}", svc)
    rt.wait_for_worker("checked", WorkerState.RUNNING)
    pid = _status(rt, "checked").pid
    switch.write_text(mode)
    (unhealthy, *_) = rec.wait_for("worker.unhealthy", lambda e: e.payload.to_dict()["reason"].startswith(reason))
    payload = unhealthy.payload.to_dict()
    assert payload["what"] == "health" and payload["action"] == "report" and payload["pid"] == pid
    rt.wait_for_worker("checked", WorkerState.UNHEALTHY)
    # The worker goes on meanwhile: a health() that fails, or hangs, holds up neither its ticks nor its supervision.
    before = _readings(rec, pid)
    rec.wait_for("test.health.reading", _is("x", pid=pid), count=before + 3)
    recovered = len(rec.of("worker.healthy"))
    switch.write_text("ok")
    rec.wait_for("worker.healthy", _is("x", pid=pid), count=recovered + 1)
    rt.wait_for_worker("checked", WorkerState.RUNNING)
    assert _status(rt, "checked").pid == pid
    assert not rec.of("worker.exited")


def test_a_hung_health_check_does_not_hang_the_stop(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    switch = tmp_path / "mode"
    svc = Checked("stuck", str(switch))
    rt, rec = make_runtime("health-stuck", svc)
    rt.wait_for_worker("stuck", WorkerState.RUNNING)
    switch.write_text("hang")
    rec.wait_for("worker.unhealthy")
    rt.stop_worker("stuck")  # graceful: the hung health() thread is not waited for
    (exited,) = rec.wait_for("worker.exited")
    assert exited.payload.to_dict()["cause"] == "stopped"
    assert _status(rt, "stuck").state is WorkerState.STOPPED


def test_a_hung_health_check_restarts_the_worker(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    switch = tmp_path / "mode"
    switch.write_text("hang")  # every incarnation hangs: restarted until the intensity gives up
    svc = Checked("hanger", str(switch))
    svc.on_unhealthy = "restart"
    svc.max_restarts = 1
    rt, rec = make_runtime("health-hanger", svc)
    rec.wait_for("worker.gave_up", timeout=30)
    exits = rec.of("worker.exited")
    assert [e.payload.to_dict()["cause"] for e in exits] == ["unhealthy", "unhealthy"]
    assert all("health() gave no answer" in e.payload.to_dict()["reason"] for e in exits)
    rt.wait_for_worker("hanger", WorkerState.FAILED)


def test_a_device_whose_health_fails_is_restarted(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    dev = Probe(id="probe", config=str(tmp_path / "marker"))
    dev.health_interval = 0.05
    rt, rec = make_runtime("health-device", dev)
    (unhealthy,) = rec.wait_for("worker.unhealthy")
    payload = unhealthy.payload.to_dict()
    assert payload["role"] == "device" and payload["reason"] == "first incarnation: unwell"
    assert payload["action"] == "restart"
    rec.wait_for("worker.started", _is("x", incarnation=2))
    status = rt.wait_for_worker("probe", WorkerState.RUNNING)
    assert status.pid != payload["pid"] and status.restarts == 1
    assert [e.payload.to_dict()["cause"] for e in rec.of("worker.exited")] == ["unhealthy"]


def test_an_unhealthy_device_kept_by_report_still_answers_calls(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("health-calls", Unwell(id="unwell"))
    (unhealthy,) = rec.wait_for("worker.unhealthy")
    assert unhealthy.payload.to_dict()["reason"] == "calibration drifted"
    status = rt.wait_for_worker("unwell", WorkerState.UNHEALTHY)
    assert rt.device(Unwell, "unwell").call(Unwell.pid) == status.pid
    assert len(rec.of("worker.unhealthy")) == 1  # reported once while it stays unwell


def test_a_health_frame_is_a_worker_frame_and_its_reason_is_made_safe() -> None:
    for frame in (p.Health(True), p.Health(False, "sensor cold"), p.Health(False, "bad \udcff" + "x" * 100_000)):
        back = p.decode(p.encode(frame), p.WORKER_FRAMES)
        assert isinstance(back, p.Health) and back.ok is frame.ok
        back.reason.encode()  # always encodable, however it was made
        assert len(back.reason) < 100_000
    with pytest.raises(ProtocolError):
        p.decode(p.encode(p.Health(True))[:-1], p.WORKER_FRAMES)


# ---- settings ----------------------------------------------------------------------------

_EXPECT = "'bad': expect must be a table of message name -> seconds (e.g. {'plant.reading': 2.0})"
BAD_SETTINGS = [
    ("expect", {"test.health.nothing": 1.0}, f"{_EXPECT}: 'test.health.nothing' is the name of no registered"),
    ("expect", {"": 1.0}, f"{_EXPECT}: '' is the name of no registered Message class"),
    ("expect", {3: 1.0}, f"{_EXPECT}: 3 is the name of no registered Message class"),
    ("expect", {"test.health.reading": 0}, f"{_EXPECT}: 0 for 'test.health.reading' is not a positive number"),
    ("expect", {"test.health.reading": -2.0}, f"{_EXPECT}: -2.0 for 'test.health.reading' is not a positive"),
    ("expect", {"test.health.reading": "2"}, f"{_EXPECT}: '2' for 'test.health.reading' is not a positive"),
    ("expect", {"test.health.reading": True}, f"{_EXPECT}: True for 'test.health.reading' is not a positive"),
    ("expect", ["test.health.reading"], f"{_EXPECT}, not ['test.health.reading']"),
    ("health_interval", 0, "'bad': health_interval must be a positive number, not 0"),
    ("health_interval", float("nan"), "'bad': health_interval must be a positive number, not nan"),
    ("health_timeout", -1.0, "'bad': health_timeout must be a positive number, not -1.0"),
    ("on_unhealthy", "ignore", "'bad': on_unhealthy must be one of restart, report, not 'ignore'"),
]


@pytest.mark.parametrize(("key", "value", "error"), BAD_SETTINGS)
def test_bad_health_settings_are_refused_in_one_line(key: str, value: object, error: str) -> None:
    for component in (Flow("bad"), Probe(id="bad")):
        setattr(component, key, value)
        rt = Runtime(name="health-settings")
        with pytest.raises(RegistrationError) as info:
            rt.add_worker(component)
        assert str(info.value).startswith(error)
        assert "\n" not in str(info.value)
        assert rt.workers() == []


def test_good_health_settings_are_taken() -> None:
    svc = Flow("good")
    svc.expect = {"test.health.reading": 2}
    svc.health_interval = 1
    svc.health_timeout = 0.5
    svc.on_unhealthy = "report"
    rt = Runtime(name="health-settings")
    rt.add_worker(svc)  # taken: no error


GOOD_TOML = """
[[services]]
name = "steady"
class = "tests.test_health:Steady"
expect = { "test.health.reading" = 2.0 }
health_interval = 0.5
health_timeout = 3
on_unhealthy = "report"

[[devices]]
id = "probe"
class = "tests.test_health:Probe"
expect = { "test.health.reading" = 1 }
on_unhealthy = "restart"
"""


def test_health_settings_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "system.toml"
    path.write_text(GOOD_TOML)
    spec = load_system(path)
    (steady,) = spec.components["services"]
    assert isinstance(steady, Steady)
    assert dict(steady.expect) == {"test.health.reading": 2.0}
    assert (steady.health_interval, steady.health_timeout, steady.on_unhealthy) == (0.5, 3, "report")
    (probe,) = spec.components["devices"]
    assert isinstance(probe, Probe)
    assert dict(probe.expect) == {"test.health.reading": 1} and probe.on_unhealthy == "restart"
    assert Steady.expect == {}  # set on the instance only


_HEAD = '[[services]]\nname = "bad"\nclass = "tests.test_health:Steady"\n'
BAD_TOML = [
    (
        _HEAD + 'expect = { "plant.readng" = 2.0 }\n',
        "4: services[0].expect: expect must be a table of message name -> seconds",
        "'plant.readng' is the name of no registered Message class",
    ),
    (
        _HEAD + 'expect = { "test.health.reading" = 0 }\n',
        "4: services[0].expect: expect must be a table",
        "0 for 'test.health.reading' is not a positive number",
    ),
    (_HEAD + 'expect = "test.health.reading"\n', "4: services[0].expect: expect must be a table", ""),
    (_HEAD + "health_interval = -1\n", "4: services[0].health_interval: health_interval must be a positive", ""),
    (_HEAD + "health_timeout = 0\n", "4: services[0].health_timeout: health_timeout must be a positive", ""),
    (
        _HEAD + 'on_unhealthy = "shrug"\n',
        "4: services[0].on_unhealthy: on_unhealthy must be one of restart, report, not 'shrug'",
        "",
    ),
    (
        '[[devices]]\nid = "bad"\nclass = "tests.test_health:Probe"\nhealth_interval = 0\n',
        "4: devices[0].health_interval: health_interval must be a positive number, not 0",
        "",
    ),
]


@pytest.mark.parametrize(("text", "error", "detail"), BAD_TOML)
def test_bad_health_settings_in_toml_name_the_line_and_key(tmp_path: Path, text: str, error: str, detail: str) -> None:
    path = tmp_path / "system.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_system(path)
    assert str(info.value).startswith(f"{path}:{error}")
    assert detail in str(info.value)
    assert "\n" not in str(info.value)

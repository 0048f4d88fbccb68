"""System files and ``module:Class`` targets: built as declared, or one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from bussdcc import Device, Service
from bussdcc.cli._config import build, load_system, parse_policy_value
from bussdcc.errors import ConfigError

from ._cli import PLANT


def test_the_plant_example_loads_as_declared() -> None:
    spec = load_system(PLANT)
    assert spec.name == "plant"
    (sensor,) = spec.components["devices"]
    (controller,) = spec.components["services"]
    (logger,) = spec.components["processes"]
    assert isinstance(sensor, Device) and sensor.id == "sensor-1"
    assert sensor.config == {"period": 0.5, "crash_chance": 0.02}
    assert sensor.max_restarts == 100 and sensor.restart_window == 60.0
    assert isinstance(controller, Service) and controller.name == "controller"
    assert controller.interval == 5.0 and controller.target == 22.0  # type: ignore[attr-defined]
    assert logger.name == "logger"  # type: ignore[attr-defined]
    assert spec.components["interfaces"] == []


def test_build_sets_the_policy_on_the_instance_only() -> None:
    svc = build("tests.cli_parts:Beeper", "b", {"every": 0.5}, {"restart": False, "max_restarts": 2})
    assert isinstance(svc, Service)
    assert (svc.name, svc.interval, svc.restart, svc.max_restarts) == ("b", 0.5, False, 2)
    assert type(svc).restart is True
    dev = build("tests.cli_parts:Probe", "p1", {"x": 1})
    assert isinstance(dev, Device) and (dev.id, dev.config) == ("p1", {"x": 1})


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("No", False), ("3", 3), ("2.5", 2.5), ("transient", "transient")]
)
def test_command_line_settings(text: str, value: object) -> None:
    assert parse_policy_value(text) == value


BAD = [
    (
        '[runtime]\nname = "x"\ncolour = 1\n',
        "3: runtime.colour: unknown key (expected name, record, snapshot, log_dir)",
    ),
    ('[runtime]\nname = ""\n', "2: runtime.name: must be a non-empty string"),
    ("[[gadgets]]\nclass = 'a:b'\n", "1: gadgets: unknown section (expected runtime, devices, services, processes"),
    ("devices = 3\n", "1: devices: must be an array of tables ([[devices]])"),
    (
        '[[services]]\nname = "a"\nclass = "tests.cli_parts:Beeper"\n\n[[services]]\nname = "b"\nclass = "x"\n',
        "7: services[1].class: 'x' is not of the form module:attribute",
    ),
    (
        '[[processes]]\nname = "p"\nclass = "tests.cli_parts:Beeper"\n',
        "3: processes[0].class: tests.cli_parts:Beeper is not a Process",
    ),
    (
        '[[processes]]\nname = "p"\nclass = "tests._helpers:Recorder"\nrestart = false\n',
        "4: processes[0].restart: unknown key",
    ),
    (
        '[[services]]\nname = "p"\nclass = "tests.cli_parts:Beeper"\nconfig = { loud = true }\n',
        "3: services[0].class: cannot create 'tests.cli_parts:Beeper': TypeError(",
    ),
]


@pytest.mark.parametrize(("text", "error"), BAD)
def test_bad_files_name_the_file_line_and_key(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "system.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_system(path)
    assert str(info.value).startswith(f"{path}:{error}")
    assert "\n" not in str(info.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_system(tmp_path / "none.toml")

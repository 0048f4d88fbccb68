"""Systems described as data: ``module:Class`` targets, and TOML files declaring a whole runtime."""

from __future__ import annotations

import math
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RegistrationError
from ..kernel import Device, Interface, Process, Service
from ..supervisor._specs import POLICY_KEYS, SERVICE_SETTINGS, build, check_supervised, import_target

__all__ = ["POLICY_KEYS", "SystemSpec", "build", "import_target", "load_system", "parse_policy_value"]

_SECTIONS = {"devices": Device, "services": Service, "processes": Process, "interfaces": Interface}


def parse_policy_value(text: str) -> Any:
    """A command-line setting: ``true``/``false``, a number, or a string as is."""
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ---- TOML ------------------------------------------------------------------------


class SystemSpec:
    """A parsed TOML system: its name and its components, in declaration order per section."""

    def __init__(self, name: str, components: dict[str, list[object]]) -> None:
        self.name = name
        self.components = components
        #: ``[runtime] record`` and ``snapshot``: what to record (see Runtime's ``record``).
        self.record: str | None = None
        self.snapshot: float | None = None


def _line_of(text: str, section: str, index: int | None, key: str | None) -> int:
    lines = text.splitlines()
    start = 0
    if index is not None:
        seen = -1
        for i, line in enumerate(lines):
            if re.match(rf"\s*\[\[\s*{re.escape(section)}\s*\]\]", line):
                seen += 1
                if seen == index:
                    start = i
                    break
    if key is not None:
        for i in range(start, len(lines)):
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
                return i + 1
            if i > start and lines[i].lstrip().startswith("["):
                break
    return start + 1


def _family(section: str) -> str:
    # Workers share one namespace (a Service's name, a Device's id); Processes and Interfaces another.
    return "workers" if section in ("devices", "services") else "receivers"


def _interval_ok(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def load_system(path: Path) -> SystemSpec:
    """Parse a TOML system description; every error names the file, the line and the key."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")  # TOML is UTF-8, whatever the locale says
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        why = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        raise ConfigError(f"{path}:{line}: {why}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc

    def fail(section: str, index: int | None, key: str | None, why: str) -> ConfigError:
        line = _line_of(text, section, index, key)
        where = f"{section}[{index}]" if index is not None else section
        return ConfigError(f"{path}:{line}: {where}{'.' + key if key else ''}: {why}")

    for key in data:
        if key not in _SECTIONS and key != "runtime":
            raise fail(key, None, None, f"unknown section (expected runtime, {', '.join(_SECTIONS)})")
    runtime = data.get("runtime", {})
    if not isinstance(runtime, dict):
        raise fail("runtime", None, None, "must be a table")
    for key in runtime:
        if key not in ("name", "record", "snapshot"):
            raise fail("runtime", None, key, "unknown key (expected name, record, snapshot)")
    record, snapshot = runtime.get("record"), runtime.get("snapshot")
    if record is not None and (not isinstance(record, str) or not record):
        raise fail("runtime", None, "record", "must be a non-empty string (an MCAP file)")
    if snapshot is not None and (isinstance(snapshot, bool) or not isinstance(snapshot, int | float) or snapshot < 0):
        raise fail("runtime", None, "snapshot", "must be a number of seconds >= 0")
    name = runtime.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise fail("runtime", None, "name", "must be a non-empty string")
    # Import paths are relative to the file, as the file's author sees them.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    components: dict[str, list[object]] = {}
    seen: dict[str, set[str]] = {}
    for section, base in _SECTIONS.items():
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise fail(section, None, None, f"must be an array of tables ([[{section}]])")
        built: list[object] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise fail(section, i, None, f"must be a table ([[{section}]]), not {entry!r}")
            ident = "id" if section == "devices" else "name"
            for key in ("class", ident):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise fail(section, i, key if key in entry else None, f"{key!r} is required (a string)")
            policy = {k: v for k, v in entry.items() if k not in ("class", ident, "config")}
            for key in policy:
                if key not in POLICY_KEYS or base in (Process, Interface):
                    raise fail(section, i, key, "unknown key")
                if base is Device and key in SERVICE_SETTINGS:
                    raise fail(section, i, key, "a Service setting: a Device has none")
            try:
                component = build(entry["class"], entry[ident], entry.get("config"), policy)
            except ConfigError as exc:
                raise fail(section, i, "class", str(exc)) from None
            if not isinstance(component, base) or (base is Process and isinstance(component, Interface)):
                raise fail(section, i, "class", f"{entry['class']} is not a {base.__name__}")
            if entry[ident] in seen.get(_family(section), set()):
                raise fail(section, i, ident, f"{entry[ident]!r} is used twice")
            seen.setdefault(_family(section), set()).add(entry[ident])
            if isinstance(component, Service | Device):
                try:
                    check_supervised(component)
                    if isinstance(component, Service) and not _interval_ok(component.interval):
                        raise RegistrationError(f"{entry[ident]!r}: interval must be a number >= 0")
                except RegistrationError as exc:
                    # Point at the setting at fault when the file sets it.
                    found = re.search(r": (\w+) must be", str(exc))
                    key = found.group(1) if found and found.group(1) in entry else "class"
                    raise fail(section, i, key, str(exc).split(": ", 1)[-1]) from None
            built.append(component)
        components[section] = built
    spec = SystemSpec(name, components)
    spec.record, spec.snapshot = record, snapshot
    return spec

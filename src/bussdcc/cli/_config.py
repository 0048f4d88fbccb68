"""Systems described as data: ``module:Class`` targets, and TOML files declaring a whole runtime."""

from __future__ import annotations

import copy
import math
import re
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RegistrationError
from ..kernel import Device, Interface, Process, Service
from ..supervisor import Runtime
from ..supervisor._deps import DependencyError, start_order
from ..supervisor._pools import instances_error
from ..supervisor._specs import POLICY_KEYS, SERVICE_SETTINGS, build, check_group, check_supervised, import_target

__all__ = [
    "POLICY_KEYS",
    "GroupEntry",
    "ReceiverEntry",
    "SystemSpec",
    "WorkerEntry",
    "build",
    "import_target",
    "install",
    "load_system",
    "parse_policy_value",
]

_SECTIONS = {"devices": Device, "services": Service, "processes": Process, "interfaces": Interface}
#: The keys of ``[runtime]``, each with its check (None if fine, else why not).
RUNTIME_KEYS: dict[str, Callable[[object], str | None]] = {
    "name": lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
    "record": lambda v: None if isinstance(v, str) and v else "must be a non-empty string (an MCAP file)",
    "snapshot": lambda v: None if _interval_ok(v) else "must be a number of seconds >= 0",
    "log_dir": lambda v: None if isinstance(v, str) and v else "must be a non-empty string",
}
#: The keys of a ``[[groups]]`` entry (``strategy`` may be left out).
GROUP_KEYS = ("name", "strategy", "members")
#: Keys of a worker entry (``[[devices]]``, ``[[services]]``) besides its policy (``POLICY_KEYS``).
WORKER_KEYS = ("class", "config", "instances")


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


@dataclass(frozen=True)
class WorkerEntry:
    """One ``[[devices]]`` or ``[[services]]`` entry as the file says it: plain values, comparable with ``==``.

    ``settings`` holds every supervision and process setting the entry gives (``restart``,
    ``after``, ``env``, ...; ``cwd`` made absolute); ``instances`` is None unless it is a pool.
    """

    section: str
    name: str
    target: str
    config: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    instances: int | None = None
    line: int = field(default=0, compare=False)

    def make(self, name: str | None = None) -> Service | Device:
        """A fresh component for this entry (a pool member: ``name`` is ``NAME-k``)."""
        component = build(self.target, name or self.name, copy.deepcopy(self.config), copy.deepcopy(self.settings))
        assert isinstance(component, Service | Device)
        return component

    def members(self) -> list[str]:
        """The workers this entry makes: its name, or a pool's ``NAME-0 .. NAME-(N-1)``."""
        if self.instances is None:
            return [self.name]
        return [f"{self.name}-{k}" for k in range(self.instances)]


@dataclass(frozen=True)
class GroupEntry:
    """One ``[[groups]]`` entry: its name, strategy and members (by name, in start order)."""

    name: str
    strategy: str
    members: tuple[str, ...]
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ReceiverEntry:
    """One ``[[processes]]`` or ``[[interfaces]]`` entry as the file says it, comparable with ``==``."""

    section: str
    name: str
    target: str
    config: Any = None
    line: int = field(default=0, compare=False)


class SystemSpec:
    """A parsed TOML system.

    ``components``: every component built, by section, in declaration order (a pool's members
    included); ``workers``: each worker entry by name (a pool's by the pool's name);
    ``groups``: each group by name; ``receivers``: each Process and Interface entry by name.
    """

    def __init__(
        self,
        name: str,
        components: dict[str, list[object]],
        workers: dict[str, WorkerEntry] | None = None,
        groups: dict[str, GroupEntry] | None = None,
        http: str | None = None,
        *,
        receivers: dict[str, ReceiverEntry] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.components = components
        self.workers = workers or {}
        self.groups = groups or {}
        #: Where to serve metrics and the status page (``[http] listen``), if anywhere.
        self.http = http
        self.receivers = receivers or {}
        #: ``[runtime] record`` (relative to the file's folder) and ``snapshot``: what to record.
        self.record: str | None = None
        self.snapshot: float | None = None
        #: ``[runtime] log_dir``, relative to the file's folder.
        self.log_dir = log_dir


def install(spec: SystemSpec, rt: Runtime) -> None:
    """Register a parsed system with a runtime (before boot): workers, groups, pools, processes, interfaces."""
    built = {getattr(c, "name", None): c for cs in spec.components.values() for c in cs}
    group_of = {m: g for g in spec.groups.values() for m in g.members}
    registered: set[str] = set()
    # In the file's order: it decides the start order wherever dependencies leave a choice.
    for entry in spec.workers.values():
        if entry.instances is not None:
            rt.add_pool(entry.name, _maker(entry, built), entry.instances)
        elif (group := group_of.get(entry.name)) is None:
            component = built[entry.name]
            assert isinstance(component, Service | Device)
            rt.add_worker(component)
        elif group.name not in registered:
            registered.add(group.name)
            members = [built[m] for m in group.members]
            rt.register_group(group.name, members, strategy=group.strategy)  # type: ignore[arg-type]
    for section in ("processes", "interfaces"):
        for component in spec.components[section]:
            if isinstance(component, Interface):
                rt.register_interface(component)
            else:
                assert isinstance(component, Process)
                rt.register_process(component)


def _maker(entry: WorkerEntry, built: dict[Any, object]) -> Callable[[str], Service | Device]:
    def make(name: str) -> Service | Device:
        component = built.pop(name, None)  # made (and checked) when the file was read
        return component if isinstance(component, Service | Device) else entry.make(name)

    return make


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
    elif key is not None:
        for i, line in enumerate(lines):
            if re.match(rf"\s*\[\s*{re.escape(section)}\s*\]", line):
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


def _read(path: Path) -> tuple[str, dict[str, Any]]:
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
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from exc


def load_system(path: Path) -> SystemSpec:
    """Parse and check a TOML system description; every error is one line naming the file, the line and the key.

    Nothing starts: every component is built (imported, constructed, its settings checked),
    every group, pool and dependency checked, the start order found.
    """
    text, data = _read(path)

    def fail(section: str, index: int | None, key: str | None, why: str) -> ConfigError:
        line = _line_of(text, section, index, key)
        where = f"{section}[{index}]" if index is not None else section
        return ConfigError(f"{path}:{line}: {where}{'.' + key if key else ''}: {why}")

    for key in data:
        if key not in _SECTIONS and key not in ("runtime", "groups", "http"):
            raise fail(key, None, None, f"unknown section (expected runtime, {', '.join(_SECTIONS)}, groups, http)")
    runtime = data.get("runtime", {})
    if not isinstance(runtime, dict):
        raise fail("runtime", None, None, "must be a table")
    for key, value in runtime.items():
        check = RUNTIME_KEYS.get(key)
        if check is None:
            raise fail("runtime", None, key, f"unknown key (expected {', '.join(RUNTIME_KEYS)})")
        if (why := check(value)) is not None:
            raise fail("runtime", None, key, why)
    record, snapshot = runtime.get("record"), runtime.get("snapshot")
    name = runtime.get("name", path.stem)
    # Import paths (and cwd) are relative to the file, as the file's author sees them.
    folder = path.resolve().parent
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    components: dict[str, list[object]] = {}
    entries: dict[str, WorkerEntry] = {}
    #: Where each worker (a pool's members too) was declared: (section, index).
    declared: dict[str, tuple[str, int]] = {}
    pools: dict[str, list[str]] = {}
    receivers: dict[str, ReceiverEntry] = {}
    seen: dict[str, set[str]] = {}
    for section, base in _SECTIONS.items():
        entries_in = data.get(section, [])
        if not isinstance(entries_in, list):
            raise fail(section, None, None, f"must be an array of tables ([[{section}]])")
        built: list[object] = []
        for i, entry in enumerate(entries_in):
            if not isinstance(entry, dict):
                raise fail(section, i, None, f"must be a table ([[{section}]]), not {entry!r}")
            ident = "id" if section == "devices" else "name"
            for key in ("class", ident):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise fail(section, i, key if key in entry else None, f"{key!r} is required (a string)")
            if not entry[ident].isprintable():  # a status row, a file name, a metric label: one clean line
                raise fail(section, i, ident, f"must have no control characters, not {entry[ident]!r}")
            worker = base in (Device, Service)
            policy = {k: v for k, v in entry.items() if k not in ("class", ident, "config", "instances")}
            for key in policy:
                if key not in POLICY_KEYS or not worker:
                    raise fail(section, i, key, "unknown key")
                if base is Device and key in SERVICE_SETTINGS:
                    raise fail(section, i, key, "a Service setting: a Device has none")
            instances = entry.get("instances")
            if "instances" in entry:
                if not worker:
                    raise fail(section, i, "instances", "unknown key")
                if (why := instances_error(instances)) is not None:
                    raise fail(section, i, "instances", why)
            if isinstance(policy.get("cwd"), str) and policy["cwd"]:
                policy["cwd"] = str(folder / policy["cwd"])  # relative to the file
            names = [entry[ident]] if instances is None else [f"{entry[ident]}-{k}" for k in range(instances)]
            family = seen.setdefault(_family(section), set())
            for one in [entry[ident]] if instances is None else [entry[ident], *names]:
                if one in family:
                    raise fail(section, i, ident, f"{one!r} is used twice")
                family.add(one)
            # A pool of none is still checked: one member is made, and dropped.
            for one in names or [f"{entry[ident]}-0"]:
                component = _build(fail, section=section, i=i, base=base, entry=entry, name=one, policy=policy)
                if names:
                    built.append(component)
                    if worker:
                        declared[one] = (section, i)
            if worker:
                line = _line_of(text, section, i, None)
                entries[entry[ident]] = WorkerEntry(
                    section, entry[ident], entry["class"], entry.get("config"), policy, instances, line
                )
                declared[entry[ident]] = (section, i)
                if instances is not None:
                    pools[entry[ident]] = names
            else:
                line = _line_of(text, section, i, None)
                receivers[entry[ident]] = ReceiverEntry(
                    section, entry[ident], entry["class"], entry.get("config"), line
                )
        components[section] = built
    groups = _groups(fail, data, text, components, pools)
    workers = {
        c.name: c for section in ("devices", "services") for c in components[section] if isinstance(c, Service | Device)
    }
    try:
        start_order(workers, pools, [g.members for g in groups.values()])
    except DependencyError as exc:
        section, index = declared[exc.worker]
        raise fail(section, index, exc.key, str(exc).split(": ", 1)[-1]) from None
    log_dir = folder / runtime["log_dir"] if "log_dir" in runtime else None
    spec = SystemSpec(name, components, entries, groups, _http_listen(data, fail), receivers=receivers, log_dir=log_dir)
    # Like every path of the file (cwd, log_dir), the recording is relative to the file's folder.
    spec.record, spec.snapshot = (None if record is None else str(folder / record)), snapshot
    return spec


def _build(
    fail: Callable[[str, int | None, str | None, str], ConfigError],
    *,
    section: str,
    i: int,
    base: type,
    entry: dict[str, Any],
    name: str,
    policy: dict[str, Any],
) -> object:
    try:
        component = build(entry["class"], name, copy.deepcopy(entry.get("config")), copy.deepcopy(policy))
    except ConfigError as exc:
        raise fail(section, i, "class", str(exc)) from None
    if not isinstance(component, base) or (base is Process and isinstance(component, Interface)):
        raise fail(section, i, "class", f"{entry['class']} is not a {base.__name__}")
    if isinstance(component, Service | Device):
        try:
            check_supervised(component)
            if isinstance(component, Service) and not _interval_ok(component.interval):
                raise RegistrationError(f"{name!r}: interval must be a number >= 0")
        except RegistrationError as exc:
            # Point at the setting at fault when the file sets it.
            found = re.match(r"'[^']*': (\w+)", str(exc))
            key = found.group(1) if found and found.group(1) in entry else "class"
            raise fail(section, i, key, str(exc).split(": ", 1)[-1]) from None
    return component


def _groups(
    fail: Callable[[str, int | None, str | None, str], ConfigError],
    data: dict[str, Any],
    text: str,
    components: dict[str, list[object]],
    pools: dict[str, list[str]],
) -> dict[str, GroupEntry]:
    entries = data.get("groups", [])
    if not isinstance(entries, list):
        raise fail("groups", None, None, "must be an array of tables ([[groups]])")
    workers = {getattr(c, "name", None): c for s in ("devices", "services") for c in components[s]}
    pooled = {m for members in pools.values() for m in members}
    groups: dict[str, GroupEntry] = {}
    taken: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise fail("groups", i, None, f"must be a table ([[groups]]), not {entry!r}")
        for key in entry:
            if key not in GROUP_KEYS:
                raise fail("groups", i, key, f"unknown key (expected {', '.join(GROUP_KEYS)})")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise fail("groups", i, "name" if "name" in entry else None, "'name' is required (a string)")
        if name in groups:
            raise fail("groups", i, "name", f"{name!r} is used twice")
        strategy = entry.get("strategy", "one_for_one")
        members = entry.get("members")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            where = "members" if "members" in entry else None
            raise fail("groups", i, where, "'members' is required (a list of worker names)")
        for member in members:
            if member in pools or member in pooled:
                raise fail("groups", i, "members", f"{member!r} is a pool's: a pool cannot be a group's member")
            if member not in workers:
                raise fail("groups", i, "members", f"{member!r} is no declared device or service")
            if member in taken:
                raise fail("groups", i, "members", f"{member!r} is a member of the group {taken[member]!r} already")
            taken[member] = name
        try:
            check_group(name, [workers[m] for m in members], strategy)
        except RegistrationError as exc:
            key = "strategy" if "strategy" in str(exc) and "strategy" in entry else "members"
            raise fail("groups", i, key, str(exc)) from None
        groups[name] = GroupEntry(name, strategy, tuple(members), _line_of(text, "groups", i, None))
    return groups


def _http_listen(data: dict[str, Any], fail: Callable[[str, int | None, str | None, str], ConfigError]) -> str | None:
    """``[http] listen = "127.0.0.1:9100"``: where to serve metrics and the status page."""
    table = data.get("http")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise fail("http", None, None, "must be a table")
    for key in table:
        if key != "listen":
            raise fail("http", None, key, "unknown key (expected listen)")
    listen = table.get("listen")
    if not isinstance(listen, str) or not listen:
        raise fail("http", None, "listen" if "listen" in table else None, "listen is required: 'HOST:PORT' (a string)")
    return listen

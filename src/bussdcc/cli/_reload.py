"""Reloading a runtime from its system file: the plan, a pure function of two specs, and applying it.

Each component is compared by its whole table as the file gives it (class, config,
policy, and any other key), as a plain value: a key the file format gains later is
covered without a change here. Runs on the thread that reloads (see ``Runtime.reload``).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from ..errors import BussdccError, ConfigError, ControlError
from ..kernel import Device, Interface, Process, Service
from ..kernel import protocol as p
from ..kernel._builtin import ReloadPlan
from ..supervisor import Runtime, WorkerState
from ._config import SystemSpec, load_system

#: Sections in boot order: devices, then Processes and Interfaces, then services.
BOOT_ORDER: Final = ("devices", "processes", "interfaces", "services")
_KINDS: Final = {"devices": "device", "services": "service", "processes": "process", "interfaces": "interface"}
#: Workers (Services and Devices) share one namespace; Processes and Interfaces another.
WORKER: Final = "worker"
RECEIVER: Final = "receiver"
#: A component's place: its namespace and its name.
Key: TypeAlias = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Item:
    """One declared component: its kind, name, and its table as a plain value."""

    kind: str
    name: str
    entry: Any

    def same(self, other: Item) -> bool:
        """Whether ``other`` declares the very same component (NaN equal to NaN, key order ignored)."""
        if self.kind != other.kind or self.name != other.name:
            return False
        if self.entry == other.entry:
            return True
        return _canonical(self.entry) == _canonical(other.entry)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


@dataclass(frozen=True, slots=True)
class Plan:
    """What changes from one spec to the next, each in its spec's boot order."""

    added: tuple[Key, ...] = ()
    removed: tuple[Key, ...] = ()
    changed: tuple[Key, ...] = ()
    unchanged: tuple[Key, ...] = ()

    def stops(self, old: Mapping[Key, Item]) -> list[Key]:
        """What stops (removed, and changed ones' old selves): reverse boot order of the old spec."""
        going = {*self.removed, *self.changed}
        return [key for key in reversed(list(old)) if key in going]

    def starts(self, new: Mapping[Key, Item]) -> list[Key]:
        """What starts (added, and changed ones' new selves): boot order of the new spec."""
        coming = {*self.added, *self.changed}
        return [key for key in new if key in coming]

    def message(self) -> ReloadPlan:
        """The plan as ``system.reload`` carries it: names."""
        return ReloadPlan(*(tuple(name for _, name in keys) for keys in self._parts()))

    def _parts(self) -> tuple[tuple[Key, ...], ...]:
        return self.added, self.removed, self.changed, self.unchanged


def plan(old: Mapping[Key, Item], new: Mapping[Key, Item]) -> Plan:
    """The plan from ``old`` to ``new`` (each in boot order): a pure function."""
    return Plan(
        added=tuple(key for key in new if key not in old),
        removed=tuple(key for key in old if key not in new),
        changed=tuple(key for key in new if key in old and not old[key].same(new[key])),
        unchanged=tuple(key for key in new if key in old and old[key].same(new[key])),
    )


def _namespace(section: str) -> str:
    return WORKER if section in ("devices", "services") else RECEIVER


def _name(component: object) -> str:
    name = getattr(component, "name", None)
    assert isinstance(name, str)
    return name


def items(spec: SystemSpec) -> dict[Key, Item]:
    """Every component of ``spec`` in boot order, with its table (or, if none is known, its attributes)."""
    out: dict[Key, Item] = {}
    for section in BOOT_ORDER:
        for component in spec.components.get(section, []):
            name = _name(component)
            entry = spec.entries.get((section, name))
            if entry is None:  # built by other means than a table: compare what it holds
                entry = {"class": type(component).__qualname__, "state": repr(sorted(vars(component).items()))}
            out[(_namespace(section), name)] = Item(_KINDS[section], name, entry)
    return out


def components(spec: SystemSpec) -> dict[Key, object]:
    """Every component of ``spec`` by its key."""
    return {
        (_namespace(section), _name(comp)): comp for section in BOOT_ORDER for comp in spec.components.get(section, [])
    }


def register(rt: Runtime, spec: SystemSpec) -> None:
    """Register every component of ``spec`` in ``rt`` (before boot), in boot order."""
    for section in BOOT_ORDER:
        for component in spec.components.get(section, []):
            if isinstance(component, Service | Device):
                rt.add_worker(component)
            else:
                assert isinstance(component, Process)
                rt.add_process(component)


class Reloader:
    """Re-reads one system file and applies it to the runtime made from it."""

    def __init__(self, path: Path, spec: SystemSpec, rt: Runtime) -> None:
        self.path = path
        self.rt = rt
        #: What the runtime runs of the file now (updated by each reload, also one that stops part-way).
        self.current = items(spec)
        self.file_name = spec.name

    def __call__(self, dry_run: bool) -> p.Reloaded:
        """Re-read the file; unless ``dry_run``, apply it. Raises :class:`ConfigError` for a bad file."""
        spec = load_system(self.path)
        new = items(spec)
        old = self._live()
        todo = plan(old, new)
        built = components(spec)
        notes: list[str] = []
        if spec.name != self.file_name:
            notes.append(
                f"the runtime's name changed in the file ({self.file_name} -> {spec.name}): "
                f"a running runtime keeps its name"
            )
        kinds = {new[key].name: new[key].kind for key in new}
        kinds.update({old[key].name: old[key].kind for key in todo.removed})
        self._check(todo, built, new)  # a dry run refuses what the reload would refuse
        if not dry_run:
            notes += self._apply(todo, old, new, built)
            self.file_name = spec.name
        return p.Reloaded(str(self.path), todo.message(), kinds, dry_run, notes)

    def _live(self) -> dict[Key, Item]:
        # What was removed by other means since (`bussdcc remove`) is not running: the file adds it again.
        workers = {w.name for w in self.rt.workers()}
        receivers = set(self.rt.processes())
        return {
            key: item for key, item in self.current.items() if item.name in (workers if key[0] == WORKER else receivers)
        }

    def _check(self, todo: Plan, built: Mapping[Key, object], new: Mapping[Key, Item]) -> None:
        # What would refuse to start is found before anything changes: a name taken by a
        # component the file did not declare (`bussdcc spawn`), a worker the fork server cannot receive.
        taken = {WORKER: {w.name for w in self.rt.workers()}, RECEIVER: set(self.rt.processes())}
        for key in todo.added:
            if key[1] in taken[key[0]]:
                raise ConfigError(
                    f"{self.path}: {new[key].kind} {key[1]!r}: the runtime has one by that name "
                    f"that this file did not start; nothing was changed"
                )
        for key in todo.starts(new):
            if key[0] != WORKER:
                continue
            try:
                pickle.dumps(built[key])
            except Exception as exc:
                raise ConfigError(
                    f"{self.path}: {new[key].kind} {key[1]!r} cannot be started after boot, "
                    f"it must be picklable: {exc!r}; nothing was changed"
                ) from None

    def _apply(
        self, todo: Plan, old: Mapping[Key, Item], new: Mapping[Key, Item], built: Mapping[Key, object]
    ) -> list[str]:
        rt = self.rt
        current = dict(old)
        notes: list[str] = []
        step = ""
        try:
            for key in todo.stops(old):
                step = f"stopping {old[key].kind} {key[1]!r}"
                if key[0] == WORKER:
                    rt.remove_worker(key[1])
                else:
                    rt.remove_process(key[1])
                del current[key]
            for key in todo.starts(new):
                step = f"starting {new[key].kind} {key[1]!r}"
                component = built[key]
                if isinstance(component, Service | Device):
                    rt.add_worker(component)
                    status = rt.worker(key[1])
                    if status.state not in (WorkerState.RUNNING, WorkerState.STOPPED):
                        notes.append(f"{key[1]} is {status.state.value}: {status.last_exit or 'did not start'}")
                else:
                    assert isinstance(component, Process | Interface)
                    rt.add_process(component)
                current[key] = new[key]
        except BussdccError as exc:
            self.current = current
            raise ControlError(f"{self.path}: the reload stopped while {step}: {exc}") from exc
        self.current = dict(new)
        return notes


def render(reply: p.Reloaded) -> str:
    """The plan, one line per component: ``+`` added, ``-`` removed, ``~`` changed, ``=`` unchanged."""
    plan_ = reply.plan
    counts = [
        (len(plan_.added), "added"),
        (len(plan_.removed), "removed"),
        (len(plan_.changed), "changed" if reply.dry_run else "restarted"),
        (len(plan_.unchanged), "unchanged"),
    ]
    head = ", ".join(f"{n} {what}" for n, what in counts)
    lines = [f"{reply.source}: {head}" + (" (dry run: nothing was changed)" if reply.dry_run else "")]
    for mark, names in (("+", plan_.added), ("-", plan_.removed), ("~", plan_.changed), ("=", plan_.unchanged)):
        lines += [f"  {mark} {reply.kinds.get(name, '?')} {name}" for name in names]
    lines += [f"  note: {note}" for note in reply.notes]
    return "\n".join(lines)


def summary(plan_: ReloadPlan) -> str:
    """One line: what a reload did."""
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (("added", plan_.added), ("removed", plan_.removed), ("restarted", plan_.changed))
        if names
    ]
    kept = f"{len(plan_.unchanged)} unchanged"
    return "; ".join([*parts, kept])

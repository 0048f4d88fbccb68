"""Reloading a runtime from its system file: the plan, a pure function of two specs, and applying it.

The plan compares units, each by its whole entry as the file gives it (the ``WorkerEntry``,
``ReceiverEntry`` and ``GroupEntry`` of :mod:`._config`, plain comparable values): a worker,
a pool (its template and its size), a group (its entry and its members' entries), a
Process or an Interface. Units are in start order (dependencies, then the file's order):
what stops, stops in reverse. Runs on the thread that reloads (see ``Runtime.reload``).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from ..errors import BussdccError, ConfigError, ControlError
from ..kernel import Device, Interface, Process, Service
from ..kernel import protocol as p
from ..kernel._builtin import ReloadPlan
from ..supervisor import Runtime, WorkerState
from ..supervisor._deps import start_order
from ._config import GroupEntry, SystemSpec, WorkerEntry, install, load_system

_KINDS: Final = {"devices": "device", "services": "service", "processes": "process", "interfaces": "interface"}
#: Workers (Services and Devices, pools, groups) share one namespace; Processes and Interfaces another.
WORKER: Final = "worker"
RECEIVER: Final = "receiver"
#: A unit's place: its namespace and its name.
Key: TypeAlias = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Item:
    """One declared unit: its kind (device, service, pool, group, process, interface), name and entry.

    A group's entry is its ``GroupEntry`` and its members' ``WorkerEntry``s.
    """

    kind: str
    name: str
    entry: Any

    def same(self, other: Item) -> bool:
        """Whether ``other`` declares the very same unit (NaN equal to NaN, key order ignored)."""
        if self.kind != other.kind or self.name != other.name:
            return False
        if self.entry == other.entry:
            return True
        return _canonical(self.entry) == _canonical(other.entry)

    def adjusts(self, other: Item) -> bool:
        """Whether ``other`` differs from this only in what changes in place: a pool's size, a group's strategy."""
        if self.kind != other.kind or self.name != other.name:
            return False
        a, b = self.entry, other.entry
        if self.kind == "pool" and isinstance(a, WorkerEntry) and isinstance(b, WorkerEntry):
            return _canonical(dataclasses.replace(a, instances=b.instances)) == _canonical(b)
        if self.kind == "group" and isinstance(a, tuple) and isinstance(b, tuple):
            (ga, ma), (gb, mb) = a, b
            assert isinstance(ga, GroupEntry) and isinstance(gb, GroupEntry)
            return _canonical((dataclasses.replace(ga, strategy=gb.strategy), ma)) == _canonical((gb, mb))
        return False


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, default=repr)


@dataclass(frozen=True, slots=True)
class Plan:
    """What changes from one spec to the next, each in its spec's start order."""

    added: tuple[Key, ...] = ()
    removed: tuple[Key, ...] = ()
    changed: tuple[Key, ...] = ()
    unchanged: tuple[Key, ...] = ()
    adjusted: tuple[Key, ...] = ()

    def stops(self, old: Mapping[Key, Item]) -> list[Key]:
        """What stops (removed, and changed ones' old selves): reverse start order of the old spec."""
        going = {*self.removed, *self.changed}
        return [key for key in reversed(list(old)) if key in going]

    def starts(self, new: Mapping[Key, Item]) -> list[Key]:
        """What starts (added, and changed ones' new selves): start order of the new spec."""
        coming = {*self.added, *self.changed}
        return [key for key in new if key in coming]

    def message(self) -> ReloadPlan:
        """The plan as ``system.reload`` carries it: names."""
        return ReloadPlan(*(tuple(name for _, name in keys) for keys in self._parts()))

    def _parts(self) -> tuple[tuple[Key, ...], ...]:
        return self.added, self.removed, self.changed, self.unchanged, self.adjusted


def plan(old: Mapping[Key, Item], new: Mapping[Key, Item]) -> Plan:
    """The plan from ``old`` to ``new`` (each in start order): a pure function."""
    kept = [key for key in new if key in old]
    same = {key for key in kept if old[key].same(new[key])}
    adjusted = {key for key in kept if key not in same and old[key].adjusts(new[key])}
    # What `requires` a unit that restarts restarts with it (as `bussdcc restart` takes it along).
    restarting = {key for key in kept if key not in same and key not in adjusted}
    grew = True
    while grew:
        grew = False
        gone = {n for key in restarting for n in (new[key].name, *_workers_of(new[key]))}
        for key in kept:
            if key not in restarting and _requires(new[key]) & gone:
                restarting.add(key)
                same.discard(key)
                adjusted.discard(key)
                grew = True
    return Plan(
        added=tuple(key for key in new if key not in old),
        removed=tuple(key for key in old if key not in new),
        changed=tuple(key for key in kept if key not in same and key not in adjusted),
        unchanged=tuple(key for key in kept if key in same),
        adjusted=tuple(key for key in kept if key in adjusted),
    )


def items(spec: SystemSpec) -> dict[Key, Item]:
    """Every unit of ``spec`` in start order: devices (dependencies first), Processes, Interfaces, services.

    A pool or a group is one unit, placed where its first member starts.
    """
    built = {c.name: c for s in ("devices", "services") for c in spec.components[s] if isinstance(c, Service | Device)}
    pools = {e.name: e.members() for e in spec.workers.values() if e.instances is not None}
    group_of = {m: g for g in spec.groups.values() for m in g.members}
    pool_of = {m: name for name, members in pools.items() for m in members}
    units: dict[str, Item] = {}
    for worker in start_order(built, pools, [g.members for g in spec.groups.values()]):
        if (group := group_of.get(worker)) is not None:
            members = tuple(spec.workers[m] for m in group.members)
            units.setdefault(group.name, Item("group", group.name, (group, members)))
        elif (pool := pool_of.get(worker)) is not None:
            units.setdefault(pool, Item("pool", pool, spec.workers[pool]))
        else:
            entry = spec.workers[worker]
            units.setdefault(worker, Item(_KINDS[entry.section], worker, entry))
    for entry in spec.workers.values():  # a pool of none starts nothing: after the rest of its kind
        if entry.instances is not None and entry.name not in units:
            units[entry.name] = Item("pool", entry.name, entry)

    def section(item: Item) -> str:
        first = item.entry[1][0] if item.kind == "group" else item.entry
        assert isinstance(first, WorkerEntry)
        return first.section

    out: dict[Key, Item] = {}
    for name, item in units.items():
        if section(item) == "devices":
            out[(WORKER, name)] = item
    for kind in ("processes", "interfaces"):
        for receiver in spec.receivers.values():
            if receiver.section == kind:
                out[(RECEIVER, receiver.name)] = Item(_KINDS[kind], receiver.name, receiver)
    for name, item in units.items():
        if section(item) != "devices":
            out[(WORKER, name)] = item
    return out


def _requires(item: Item) -> set[str]:
    """The names a unit's workers ``require``."""
    entry = item.entry
    members = entry[1] if item.kind == "group" else (entry,)
    out: set[str] = set()
    for member in members:
        if isinstance(member, WorkerEntry):
            needs = member.settings.get("requires") or ()
            out.update([needs] if isinstance(needs, str) else needs)
    return out


def _workers_of(item: Item) -> list[str]:
    """The worker names a unit runs as (a receiver: none)."""
    entry = item.entry
    if item.kind == "group":
        return [m.name for m in entry[1]]
    if isinstance(entry, WorkerEntry):
        return entry.members()
    return []


def register(rt: Runtime, spec: SystemSpec) -> None:
    """Register every component of ``spec`` in ``rt`` (before boot)."""
    install(spec, rt)


class Reloader:
    """Re-reads one system file and applies it to the runtime made from it."""

    def __init__(self, path: Path, spec: SystemSpec, rt: Runtime) -> None:
        self.path = path
        self.rt = rt
        #: What the runtime runs of the file now (updated by each reload, also one that stops part-way).
        self.current = items(spec)
        self.file_name = spec.name
        self.http = spec.http

    def __call__(self, dry_run: bool) -> p.Reloaded:
        """Re-read the file; unless ``dry_run``, apply it. Raises :class:`ConfigError` for a bad file."""
        spec = load_system(self.path)  # every check (a cycle too) before anything changes
        new = items(spec)
        old = self._live()
        todo = plan(old, new)
        built: dict[str, object] = {
            c.name: c for s in ("devices", "services") for c in spec.components[s] if isinstance(c, Service | Device)
        }
        for s in ("processes", "interfaces"):
            built.update({c.name: c for c in spec.components[s] if isinstance(c, Process)})
        notes: list[str] = []
        if spec.name != self.file_name:
            notes.append(
                f"the runtime's name changed in the file ({self.file_name} -> {spec.name}): "
                f"a running runtime keeps its name"
            )
        if spec.http != self.http:
            notes.append(f"[http] listen changed ({self.http} -> {spec.http}): it applies at the next start")
        kinds = {new[key].name: new[key].kind for key in new}
        kinds.update({old[key].name: old[key].kind for key in todo.removed})
        self._check(todo, old, new, built)  # a dry run refuses what the reload would refuse
        for key in todo.adjusted:
            notes.append(self._say_adjusted(old[key], new[key]))
        for key in todo.changed:
            if old[key].same(new[key]):
                notes.append(f"{new[key].kind} {key[1]}: restarts with what it requires")
            if new[key].kind == "group":
                notes.append(f"group {key[1]}: its members restart as a unit ({', '.join(_workers_of(new[key]))})")
        if not dry_run:
            notes += self._apply(todo, old, new, built)
            self.file_name = spec.name
        return p.Reloaded(str(self.path), todo.message(), kinds, dry_run, notes)

    @staticmethod
    def _say_adjusted(was: Item, now: Item) -> str:
        if now.kind == "pool":
            a, b = was.entry.instances, now.entry.instances
            return f"pool {now.name}: scaled {a} -> {b} (the members that remain keep running)"
        return f"group {now.name}: strategy {was.entry[0].strategy} -> {now.entry[0].strategy} (no restart)"

    def _live(self) -> dict[Key, Item]:
        # What was removed by other means since (`bussdcc remove`) is not running: the file adds it again.
        workers = {w.name for w in self.rt.workers()}
        receivers = set(self.rt.processes())
        pools = self.rt.pools()
        groups = self.rt.groups()

        def running(item: Item) -> bool:
            if item.kind == "pool":
                return item.name in pools
            if item.kind == "group":
                return item.name in groups
            if item.kind in ("process", "interface"):
                return item.name in receivers
            return item.name in workers

        out = {key: item for key, item in self.current.items() if running(item)}
        for key, item in out.items():
            if item.kind == "pool" and pools[item.name] != item.entry.instances:  # `bussdcc scale` since
                out[key] = Item(item.kind, item.name, dataclasses.replace(item.entry, instances=pools[item.name]))
        return out

    def _check(self, todo: Plan, old: Mapping[Key, Item], new: Mapping[Key, Item], built: Mapping[str, object]) -> None:
        # What would refuse to start is found before anything changes: a name taken by a
        # component the file did not declare (`bussdcc spawn`), a worker the fork server cannot receive.
        ours = {n for item in old.values() for n in (item.name, *_workers_of(item))}
        strangers = ({w.name for w in self.rt.workers()} | set(self.rt.pools()) | set(self.rt.groups())) - ours
        strange_receivers = set(self.rt.processes()) - {k[1] for k in old if k[0] == RECEIVER}
        starting: list[tuple[Item, str]] = []
        for key in todo.starts(new):
            item = new[key]
            if key[0] == RECEIVER:
                if key[1] in strange_receivers:
                    raise self._taken(item, key[1])
                continue
            for name in {item.name, *_workers_of(item)}:
                if name in strangers:
                    raise self._taken(item, name)
            starting += [(item, name) for name in _workers_of(item)]
        for key in todo.adjusted:
            item = new[key]
            if item.kind == "pool":
                grown = _workers_of(item)[old[key].entry.instances :]
                for name in grown:
                    if name in strangers:
                        raise self._taken(item, name)
                starting += [(item, name) for name in grown]
        for item, name in starting:
            try:
                pickle.dumps(built[name])
            except Exception as exc:
                raise ConfigError(
                    f"{self.path}: {item.kind} {item.name!r} cannot be started after boot, "
                    f"it must be picklable: {exc!r}; nothing was changed"
                ) from None

    def _taken(self, item: Item, name: str) -> ConfigError:
        which = "one by that name" if name == item.name else f"one named {name!r}"
        return ConfigError(
            f"{self.path}: {item.kind} {item.name!r}: the runtime has {which} "
            f"that this file did not start; nothing was changed"
        )

    def _apply(
        self, todo: Plan, old: Mapping[Key, Item], new: Mapping[Key, Item], built: Mapping[str, object]
    ) -> list[str]:
        rt = self.rt
        current = dict(old)
        notes: list[str] = []
        step = ""
        adjusted = set(todo.adjusted)
        going = {*todo.removed, *todo.changed}
        coming = {*todo.added, *todo.changed}
        try:
            # Stops, last first: removed and changed units, and pools that shrink.
            for key in reversed(list(old)):
                was = old[key]
                if key in going:
                    step = f"stopping {was.kind} {key[1]!r}"
                    self._stop(was)
                    del current[key]
                elif key in adjusted and was.kind == "pool" and new[key].entry.instances < was.entry.instances:
                    step = f"scaling pool {key[1]!r}"
                    rt.scale(key[1], new[key].entry.instances)
                    current[key] = new[key]
            # Starts, in dependency order: added and changed units, pools that grow, group strategies.
            for key in new:
                now = new[key]
                if key in coming:
                    step = f"starting {now.kind} {key[1]!r}"
                    self._start(now, built)
                    notes += self._failed(now)
                    current[key] = now
                elif key in adjusted:
                    step = f"adjusting {now.kind} {key[1]!r}"
                    if now.kind == "pool":
                        if now.entry.instances > old[key].entry.instances:
                            rt.scale(key[1], now.entry.instances)
                            notes += self._failed(now)
                    else:
                        rt.set_group_strategy(key[1], now.entry[0].strategy)
                    current[key] = now
        except BussdccError as exc:
            self.current = {key: current[key] for key in [*new, *old] if key in current}
            raise ControlError(f"{self.path}: the reload stopped while {step}: {exc}") from exc
        self.current = dict(new)
        return notes

    def _stop(self, item: Item) -> None:
        rt = self.rt
        if item.kind == "group":
            rt.remove_group(item.name)  # its members cannot be removed one by one: untie, then stop, last first
        elif item.kind == "pool":
            rt.remove_pool(item.name)
        elif item.kind in ("process", "interface"):
            rt.remove_process(item.name)
        else:
            rt.remove_worker(item.name)

    def _start(self, item: Item, built: Mapping[str, object]) -> None:
        rt = self.rt
        if item.kind == "group":
            group, _ = item.entry
            members = [built[m] for m in group.members]
            assert all(isinstance(m, Service | Device) for m in members)
            rt.add_group(group.name, members, strategy=group.strategy)  # type: ignore[arg-type]
        elif item.kind == "pool":
            entry: WorkerEntry = item.entry
            rt.add_pool(item.name, _maker(entry, dict(built)), entry.instances or 0)
        else:
            component = built[item.name]
            if isinstance(component, Service | Device):
                rt.add_worker(component)
            else:
                assert isinstance(component, Process | Interface)
                rt.add_process(component)

    def _failed(self, item: Item) -> list[str]:
        out = []
        for name in _workers_of(item):
            status = self.rt.worker(name)
            if status.state not in (WorkerState.RUNNING, WorkerState.STOPPED):
                out.append(f"{name} is {status.state.value}: {status.last_exit or 'did not start'}")
        return out


def _maker(entry: WorkerEntry, built: dict[str, object]) -> Callable[[str], Service | Device]:
    def make(name: str) -> Service | Device:
        component = built.pop(name, None)  # made (and checked) when the file was read
        return component if isinstance(component, Service | Device) else entry.make(name)

    return make


def render(reply: p.Reloaded) -> str:
    """The plan, one line per unit: ``+`` added, ``-`` removed, ``~`` changed, ``*`` adjusted, ``=`` unchanged."""
    plan_ = reply.plan
    counts = [
        (len(plan_.added), "added"),
        (len(plan_.removed), "removed"),
        (len(plan_.changed), "changed" if reply.dry_run else "restarted"),
        (len(plan_.adjusted), "adjusted"),
        (len(plan_.unchanged), "unchanged"),
    ]
    head = ", ".join(f"{n} {what}" for n, what in counts if n or what != "adjusted")
    lines = [f"{reply.source}: {head}" + (" (dry run: nothing was changed)" if reply.dry_run else "")]
    marks = (
        ("+", plan_.added),
        ("-", plan_.removed),
        ("~", plan_.changed),
        ("*", plan_.adjusted),
        ("=", plan_.unchanged),
    )
    for mark, names in marks:
        lines += [f"  {mark} {reply.kinds.get(name, '?')} {name}" for name in names]
    lines += [f"  note: {note}" for note in reply.notes]
    return "\n".join(lines)


def summary(plan_: ReloadPlan) -> str:
    """One line: what a reload did."""
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (
            ("added", plan_.added),
            ("removed", plan_.removed),
            ("restarted", plan_.changed),
            ("adjusted", plan_.adjusted),
        )
        if names
    ]
    kept = f"{len(plan_.unchanged)} unchanged"
    return "; ".join([*parts, kept])

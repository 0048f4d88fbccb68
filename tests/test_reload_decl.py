"""Reloading a system file that declares pools, groups and dependencies: the fewest restarts, in order."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import pytest

from bussdcc import Event, Message, WorkerState
from bussdcc.errors import ConfigError

from ._helpers import System, pids
from .reload_parts import Hello, Knob

_names = itertools.count()
WAIT = 60.0  # generous: the machine may be loaded


def _head(name: str) -> str:
    return f'[runtime]\nname = "{name}"\n'


def _pool(instances: int, label: str = "one") -> str:
    return (
        '\n[[services]]\nclass = "tests.reload_parts:Greeter"\nname = "crew"\n'
        f'instances = {instances}\nconfig = {{ label = "{label}" }}\n'
    )


def _said(evt: Event[Message], who: str, label: str) -> bool:
    return isinstance(evt.payload, Hello) and evt.payload.who == who and evt.payload.label == label


def test_a_pool_scaled_by_reload_keeps_the_remaining_members_pids(system: Callable[[str], System]) -> None:
    name = f"rdecl-p{next(_names)}"
    rt, _, path = system(_head(name) + _pool(3))
    before = pids(rt)
    assert {"crew-0", "crew-1", "crew-2"} <= set(before)

    path.write_text(_head(name) + _pool(2))
    done = rt.reload()
    assert done.plan.adjusted == ("crew",) and done.plan.changed == ()
    after = pids(rt)
    assert "crew-2" not in after
    assert after["crew-0"] == before["crew-0"] and after["crew-1"] == before["crew-1"]
    assert rt.pools()["crew"] == 2

    path.write_text(_head(name) + _pool(4))
    done = rt.reload()
    assert done.plan.adjusted == ("crew",)
    grown = pids(rt)
    assert grown["crew-0"] == before["crew-0"] and grown["crew-1"] == before["crew-1"]
    for member in ("crew-2", "crew-3"):
        assert rt.worker(member).state is WorkerState.RUNNING
    assert rt.pools()["crew"] == 4


def test_a_pools_template_change_restarts_its_members(system: Callable[[str], System]) -> None:
    name = f"rdecl-t{next(_names)}"
    rt, rec, path = system(_head(name) + _pool(2, "one"))
    before = pids(rt)

    path.write_text(_head(name) + _pool(2, "two"))
    done = rt.reload()
    assert done.plan.changed == ("crew",) and done.plan.adjusted == ()
    after = pids(rt)
    for member in ("crew-0", "crew-1"):
        assert after[member] != before[member]
        said = functools.partial(_said, who=member, label="two")
        rec.wait_for("test.hello", said, timeout=WAIT)
        assert rt.worker(member).state is WorkerState.RUNNING
    assert rt.pools()["crew"] == 2


GROUP = """
[[devices]]
class = "tests.reload_parts:Knob"
id = "knob-a"

[[devices]]
class = "tests.reload_parts:Knob"
id = "knob-b"
config = {{ level = {level} }}

[[devices]]
class = "tests.reload_parts:Knob"
id = "loner"

[[groups]]
name = "pair"
strategy = "{strategy}"
members = ["knob-a", "knob-b"]
"""


def test_a_group_members_config_change_applies_without_stopping_half_way(system: Callable[[str], System]) -> None:
    name = f"rdecl-g{next(_names)}"
    rt, _, path = system(_head(name) + GROUP.format(level=1, strategy="one_for_all"))
    before = pids(rt)

    path.write_text(_head(name) + GROUP.format(level=2, strategy="one_for_all"))
    done = rt.reload()  # the runtime refuses to remove a group's member: the group restarts as a unit
    assert done.plan.changed == ("pair",)
    assert "loner" in done.plan.unchanged
    after = pids(rt)
    assert after["loner"] == before["loner"]
    for member in ("knob-a", "knob-b"):
        assert after[member] != before[member]
        assert rt.worker(member).state is WorkerState.RUNNING
        assert rt.worker(member).group == "pair"
    assert rt.device(Knob, "knob-b").call(Knob.settings)["config"] == {"level": 2}
    assert rt.groups() == {"pair": ("one_for_all", ["knob-a", "knob-b"])}

    # Only the strategy changes: in place, nobody restarts.
    path.write_text(_head(name) + GROUP.format(level=2, strategy="rest_for_one"))
    done = rt.reload()
    assert done.plan.adjusted == ("pair",) and done.plan.changed == ()
    assert pids(rt) == after
    assert rt.groups() == {"pair": ("rest_for_one", ["knob-a", "knob-b"])}

    # The group is gone from the file: its members stop, the rest stays.
    path.write_text(_head(name) + GROUP.split("[[groups]]", maxsplit=1)[0].format(level=2))
    done = rt.reload()
    assert done.plan.removed == ("pair",)
    assert set(done.plan.added) == {"knob-a", "knob-b"}
    assert rt.groups() == {}
    assert pids(rt)["loner"] == before["loner"]
    for member in ("knob-a", "knob-b"):
        assert rt.worker(member).state is WorkerState.RUNNING and rt.worker(member).group is None


def _service(name: str, after: list[str] | None = None) -> str:
    deps = f"after = {after!r}\n".replace("'", '"') if after else ""
    return f'\n[[services]]\nclass = "tests.reload_parts:Greeter"\nname = "{name}"\n{deps}'


def test_added_workers_start_in_dependency_order_and_removed_ones_stop_in_reverse(
    system: Callable[[str], System],
) -> None:
    name = f"rdecl-d{next(_names)}"
    rt, rec, path = system(_head(name) + _service("base"))
    base = pids(rt)["base"]
    chain = ("dep-a", "dep-b", "dep-c")

    def of(message: str) -> list[str]:
        return [w for e in rec.of(message) if (w := getattr(e.payload, "worker", None)) in chain]

    # Declared last first: the file's order is not the order they may start in.
    path.write_text(
        _head(name)
        + _service("base")
        + _service("dep-c", ["dep-b"])
        + _service("dep-b", ["dep-a"])
        + _service("dep-a", ["base"])
    )
    done = rt.reload()
    assert done.plan.added == chain
    rec.wait_for("worker.started", lambda e: getattr(e.payload, "worker", None) in chain, count=3, timeout=WAIT)
    assert of("worker.started") == list(chain)

    path.write_text(_head(name) + _service("base"))
    done = rt.reload()
    assert set(done.plan.removed) == set(chain)
    rec.wait_for("worker.exited", lambda e: getattr(e.payload, "worker", None) in chain, count=3, timeout=WAIT)
    assert of("worker.exited") == list(reversed(chain))
    assert pids(rt) == {"base": base}


def test_a_changed_after_is_a_change_of_that_worker(system: Callable[[str], System]) -> None:
    name = f"rdecl-a{next(_names)}"
    rt, _, path = system(_head(name) + _service("one") + _service("two"))
    before = pids(rt)
    path.write_text(_head(name) + _service("one") + _service("two", ["one"]))
    done = rt.reload()
    assert done.plan.changed == ("two",) and done.plan.unchanged == ("one",)
    after = pids(rt)
    assert after["one"] == before["one"] and after["two"] != before["two"]


def test_what_requires_a_restarted_worker_restarts_with_it(system: Callable[[str], System]) -> None:
    name = f"rdecl-r{next(_names)}"
    text = (
        _head(name) + '\n[[devices]]\nclass = "tests.reload_parts:Knob"\nid = "bus"\nconfig = {{ level = {level} }}\n'
    )
    text += '\n[[services]]\nclass = "tests.reload_parts:Greeter"\nname = "user"\nrequires = ["bus"]\n'
    text += _service("free")
    rt, _, path = system(text.format(level=1))
    before = pids(rt)
    path.write_text(text.format(level=2))
    done = rt.reload()
    assert set(done.plan.changed) == {"bus", "user"} and done.plan.unchanged == ("free",)
    assert any("user" in note and "requires" in note for note in done.notes)
    after = pids(rt)
    assert after["free"] == before["free"]
    assert after["bus"] != before["bus"] and after["user"] != before["user"]
    assert rt.worker("user").state is WorkerState.RUNNING


def test_a_file_with_a_cycle_changes_nothing(system: Callable[[str], System]) -> None:
    name = f"rdecl-c{next(_names)}"
    rt, _, path = system(_head(name) + _service("one") + _pool(2))
    before = pids(rt)
    path.write_text(_head(name) + _service("one", ["two"]) + _service("two", ["one"]) + _pool(3))
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match=r"system\.toml:\d+: services\[\d\]\.after: dependency cycle") as caught:
            rt.reload(dry_run=dry_run)
        assert "\n" not in str(caught.value)
    assert pids(rt) == before
    assert rt.pools() == {"crew": 2}


def test_shutdown_after_a_reload_stops_in_reverse_dependency_order(system: Callable[[str], System]) -> None:
    name = f"rdecl-s{next(_names)}"
    chain = ("dep-a", "dep-b", "dep-c")
    text = _head(name) + _service("dep-a") + _service("dep-b", ["dep-a"]) + _service("dep-c", ["dep-b"])
    rt, rec, path = system(text)
    # dep-a restarts: registered again, last; it must still stop after those that start after it.
    path.write_text(text.replace('name = "dep-a"\n', 'name = "dep-a"\nconfig = { label = "again" }\n'))
    assert rt.reload().plan.changed == ("dep-a",)
    rec.wait_for("worker.exited", lambda e: getattr(e.payload, "worker", None) == "dep-a", timeout=WAIT)  # the reload's
    rt.shutdown()
    exits = [w for e in rec.of("worker.exited") if (w := getattr(e.payload, "worker", None)) in chain]
    assert exits[1:] == list(reversed(chain))

"""Reloading a runtime from its system file: the plan, applying it, ``bussdcc reload`` and SIGHUP."""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bussdcc import ReloadPlan, WorkerState
from bussdcc.cli._reload import RECEIVER, WORKER, Item, Key, Plan, plan
from bussdcc.errors import ConfigError, RuntimeStateError
from bussdcc.message import SystemReload

from ._cli import Background, bussdcc
from ._helpers import Recorder, System, pids
from .reload_parts import Hello, Knob

_names = itertools.count()

# ---- the plan: a pure function -------------------------------------------------------------------


def _items(*entries: tuple[str, str, Any]) -> dict[Key, Item]:
    out: dict[Key, Item] = {}
    for kind, name, entry in entries:
        space = WORKER if kind in ("device", "service") else RECEIVER
        out[(space, name)] = Item(kind, name, entry)
    return out


def _names_of(keys: tuple[Key, ...]) -> list[str]:
    return [name for _, name in keys]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # nothing changes
        (
            [("device", "d", {"class": "m:D", "config": {"a": 1}})],
            [("device", "d", {"config": {"a": 1}, "class": "m:D"})],
            ([], [], [], ["d"]),
        ),
        # a config changes, a setting changes, an unknown key (a format added later) changes
        (
            [
                ("device", "d", {"class": "m:D", "config": {"a": 1}}),
                ("service", "s", {"class": "m:S", "interval": 1.0}),
                ("service", "t", {"class": "m:S"}),
            ],
            [
                ("device", "d", {"class": "m:D", "config": {"a": 2}}),
                ("service", "s", {"class": "m:S", "interval": 2.0}),
                ("service", "t", {"class": "m:S", "after": ["d"]}),
            ],
            ([], [], ["d", "s", "t"], []),
        ),
        # added, removed, and a worker that became another kind under the same name
        (
            [("device", "d", {"class": "m:D"}), ("service", "gone", {"class": "m:S"})],
            [("service", "d", {"class": "m:D"}), ("service", "new", {"class": "m:S"})],
            (["new"], ["gone"], ["d"], []),
        ),
        # a Process and a worker may share a name: they are told apart
        (
            [("process", "x", {"class": "m:P"}), ("service", "x", {"class": "m:S"})],
            [("service", "x", {"class": "m:S"}), ("interface", "y", {"class": "m:I"})],
            (["y"], ["x"], [], ["x"]),
        ),
        # NaN equals NaN: a file read twice is unchanged
        (
            [("service", "n", {"class": "m:S", "config": {"v": float("nan")}})],
            [("service", "n", {"class": "m:S", "config": {"v": float("nan")}})],
            ([], [], [], ["n"]),
        ),
    ],
)
def test_the_plan_compares_whole_entries(
    old: list[tuple[str, str, Any]], new: list[tuple[str, str, Any]], expected: tuple[list[str], ...]
) -> None:
    done = plan(_items(*old), _items(*new))
    assert tuple(_names_of(keys) for keys in (done.added, done.removed, done.changed, done.unchanged)) == expected


_entries = st.dictionaries(
    st.sampled_from(["class", "config", "interval", "restart", "env"]),
    st.one_of(st.integers(0, 3), st.text(max_size=2), st.lists(st.integers(0, 2), max_size=2)),
    max_size=3,
)
_specs = st.lists(
    st.tuples(st.sampled_from(["device", "service", "process", "interface"]), st.sampled_from("abcdef"), _entries),
    max_size=8,
).map(lambda entries: _items(*entries))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs, _specs)
def test_the_plan_accounts_for_everything_once_and_orders_stops_and_starts(
    old: dict[Key, Item], new: dict[Key, Item]
) -> None:
    done = plan(old, new)
    assert set(done.added) | set(done.changed) | set(done.unchanged) == set(new)
    assert set(done.removed) == set(old) - set(new)
    parts = [*done.added, *done.removed, *done.changed, *done.unchanged]
    assert len(parts) == len(set(parts))  # each in exactly one place
    assert all(old[k] == new[k] or old[k].same(new[k]) for k in done.unchanged)
    assert all(not old[k].same(new[k]) for k in done.changed)
    # Stops: reverse boot order of the old spec; starts: boot order of the new one.
    assert done.stops(old) == [k for k in reversed(list(old)) if k in {*done.removed, *done.changed}]
    assert done.starts(new) == [k for k in new if k in {*done.added, *done.changed}]
    assert plan(new, new) == Plan(unchanged=tuple(new))
    assert done.message() == ReloadPlan(*(tuple(n for _, n in keys) for keys in done._parts()))


# ---- applying it to a live runtime -----------------------------------------------------------------

BASE = """
[runtime]
name = "{name}"

[[devices]]
class = "tests.reload_parts:Knob"
id = "knob"
config = {{ level = {level} }}

[[devices]]
class = "tests.reload_parts:Knob"
id = "spare"

[[processes]]
class = "tests.reload_parts:Note"
name = "note"
config = {{ label = "{note}" }}

[[interfaces]]
class = "tests.reload_parts:Face"
name = "face"

[[services]]
class = "tests.reload_parts:Greeter"
name = "greeter"
config = {{ label = "{label}" }}

[[services]]
class = "tests.reload_parts:Greeter"
name = "other"
"""


def _text(name: str, level: int = 1, label: str = "one", note: str = "n1") -> str:
    return BASE.format(name=name, level=level, label=label, note=note)


def _hellos(rec: Recorder, who: str) -> list[Hello]:
    return [e.payload for e in rec.of("test.hello") if isinstance(e.payload, Hello) and e.payload.who == who]


def test_reload_restarts_exactly_the_changed_workers_with_their_new_config(system: Callable[[str], System]) -> None:
    name = f"reload-c{next(_names)}"
    rt, rec, path = system(_text(name))
    before = pids(rt)
    assert rt.device(Knob, "knob").call(Knob.settings)["config"] == {"level": 1}
    path.write_text(_text(name, level=2, label="two"))
    out = rt.reload()
    assert out.plan == ReloadPlan(changed=("knob", "greeter"), unchanged=("spare", "note", "face", "other"))
    assert not out.dry_run and out.kinds["knob"] == "device" and out.kinds["greeter"] == "service"
    after = pids(rt)
    # Unchanged workers keep their processes; changed ones have new ones.
    assert after["spare"] == before["spare"] and after["other"] == before["other"]
    assert after["knob"] != before["knob"] and after["greeter"] != before["greeter"]
    assert all(w.state is WorkerState.RUNNING for w in rt.workers())
    # The new config is what the worker itself sees.
    settings = rt.device(Knob, "knob").call(Knob.settings)
    assert settings == {"config": {"level": 2}, "pid": after["knob"]}
    hello = rec.wait_for("test.hello", lambda e: getattr(e.payload, "label", "") == "two")[0].payload
    assert isinstance(hello, Hello) and hello.who == "greeter" and hello.pid == after["greeter"]
    # system.reload carries the plan, once.
    said = rec.wait_for("system.reload")
    assert len(said) == 1 and isinstance(said[0].payload, SystemReload)
    assert said[0].payload.plan == out.plan and said[0].payload.error is None
    # A second reload of the same file changes nothing.
    again = rt.reload()
    assert again.plan.changed == () and again.plan.added == () and len(again.plan.unchanged) == 6
    assert pids(rt) == after


def test_reload_adds_and_removes_workers_processes_and_interfaces(system: Callable[[str], System]) -> None:
    name = f"reload-a{next(_names)}"
    rt, rec, path = system(_text(name))
    before = pids(rt)
    text = _text(name, note="n2")
    # Remove the spare device, the other service and the interface; add a service and a process.
    text = text.replace('[[devices]]\nclass = "tests.reload_parts:Knob"\nid = "spare"\n', "")
    text = text.replace('[[interfaces]]\nclass = "tests.reload_parts:Face"\nname = "face"\n', "")
    text = text.replace('[[services]]\nclass = "tests.reload_parts:Greeter"\nname = "other"\n', "")
    text += (
        '\n[[services]]\nclass = "tests.reload_parts:Greeter"\nname = "third"\nconfig = { label = "3" }\n'
        '\n[[processes]]\nclass = "tests.reload_parts:Note"\nname = "note2"\n'
        '\n[[interfaces]]\nclass = "tests.reload_parts:Face"\nname = "face2"\nconfig = { label = "f2" }\n'
    )
    path.write_text(text)
    out = rt.reload()
    assert out.plan == ReloadPlan(
        added=("note2", "face2", "third"),
        removed=("spare", "face", "other"),
        changed=("note",),
        unchanged=("knob", "greeter"),
    )
    after = pids(rt)
    assert set(after) == {"knob", "greeter", "third"}
    assert after["knob"] == before["knob"] and after["greeter"] == before["greeter"]
    assert rt.processes() == ["recorder", "note", "note2", "face2"]
    assert _hellos(rec, "note")[-1].label == "n2" and _hellos(rec, "third")[-1].label == "3"
    assert _hellos(rec, "face2")[-1].label == "f2" and out.kinds["face2"] == "interface"
    names = rec.names()
    # Removed ones stop in reverse boot order: the service, then the interface, then the device.
    stops = [
        i
        for i, e in enumerate(rec.events)
        if (e.payload.name, getattr(e.payload, "service", getattr(e.payload, "interface", None)))
        in {("service.stopped", "other"), ("interface.stopped", "face")}
        or (e.payload.name == "worker.exited" and getattr(e.payload, "worker", "") == "spare")
    ]
    assert len(stops) == 3 and [rec.events[i].payload.name for i in stops] == [
        "service.stopped",
        "interface.stopped",
        "worker.exited",
    ]
    # Added ones start in boot order: processes before services.
    assert names.index("process.started", stops[-1]) < names.index("service.started", stops[-1])
    said = rec.wait_for("system.reload")[0].payload
    assert isinstance(said, SystemReload) and said.plan == out.plan


def test_a_dry_run_changes_nothing_and_says_what_would(system: Callable[[str], System]) -> None:
    name = f"reload-d{next(_names)}"
    rt, rec, path = system(_text(name))
    before = pids(rt)
    path.write_text(_text(name, level=5).replace('name = "other"', 'name = "renamed"'))
    out = rt.reload(dry_run=True)
    assert out.dry_run
    assert out.plan == ReloadPlan(
        added=("renamed",), removed=("other",), changed=("knob",), unchanged=("spare", "note", "face", "greeter")
    )
    assert pids(rt) == before
    assert rt.device(Knob, "knob").call(Knob.settings)["config"] == {"level": 1}
    assert rec.of("system.reload") == []
    # Applying it afterwards does what the dry run said.
    assert rt.reload().plan == out.plan


def _line(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(
    ("edit", "needle", "error"),
    [
        (lambda t: t + "\n[[services]\n", "[[services]\n", "Expected ']]' at the end of an array declaration"),
        (lambda t: t.replace('name = "other"', 'name = "other"\nspeed = 3'), "speed", "services[1].speed: unknown key"),
        (lambda t: t.replace("Greeter", "Nope", 1), "Nope", "services[0].class: module 'tests.reload_parts' has no"),
    ],
)
def test_a_broken_file_changes_nothing_and_says_why_on_one_line(
    system: Callable[[str], System], edit: Callable[[str], str], needle: str, error: str
) -> None:
    name = f"reload-b{next(_names)}"
    rt, rec, path = system(_text(name))
    before = pids(rt)
    broken = edit(_text(name, level=9))
    path.write_text(broken)
    with pytest.raises(ConfigError) as caught:
        rt.reload()
    text = str(caught.value)
    line = _line(broken, needle) if needle != "[[services]\n" else broken.count("\n")
    assert "\n" not in text and text.startswith(f"{path}:{line}: {error}"), text
    assert pids(rt) == before and rt.processes() == ["recorder", "note", "face"]
    said = rec.wait_for("system.reload")[0].payload
    assert isinstance(said, SystemReload) and said.plan is None and said.error == text


def test_a_name_taken_by_a_worker_the_file_did_not_start_changes_nothing(system: Callable[[str], System]) -> None:
    name = f"reload-t{next(_names)}"
    rt, _, path = system(_text(name))
    rt.add_worker(Knob(id="extra"))  # added by other means (as `bussdcc spawn` does)
    before = pids(rt)
    path.write_text(_text(name, level=2) + '\n[[devices]]\nclass = "tests.reload_parts:Knob"\nid = "extra"\n')
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match="device 'extra': the runtime has one by that name"):
            rt.reload(dry_run=dry_run)
    assert pids(rt) == before
    # Removing the file's own workers by other means: the file starts them again.
    rt.remove_worker("spare")
    path.write_text(_text(name))
    assert rt.reload().plan.added == ("spare",)
    assert set(pids(rt)) == set(before)


def test_a_runtime_not_made_from_a_file_has_nothing_to_reload(make_runtime: Any) -> None:
    rt, _ = make_runtime(f"reload-n{next(_names)}")
    assert not rt.reloadable
    with pytest.raises(RuntimeStateError, match="not started from a system file"):
        rt.reload()


# ---- bussdcc reload, and SIGHUP to bussdcc run FILE.toml -------------------------------------------


def _status(name: str) -> dict[str, Any]:
    done = bussdcc("status", name, "--json")
    assert done.returncode == 0, done.stderr
    return {w["name"]: w for w in json.loads(done.stdout)["workers"]}


@pytest.mark.timeout(180)
def test_the_reload_command_prints_the_plan_and_applies_it(tmp_path: Path) -> None:
    name = f"reload-cli{next(_names)}"
    path = tmp_path / "system.toml"
    path.write_text(_text(name))
    run = Background(["run", str(path)])
    try:
        run.wait_line(f"{name} running", err=True, timeout=60)
        before = _status(name)
        path.write_text(_text(name, label="two").replace('name = "other"', 'name = "fresh"'))
        dry = bussdcc("reload", name, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        lines = dry.stdout.splitlines()
        assert lines[0] == f"{path}: 1 added, 1 removed, 1 changed, 4 unchanged (dry run: nothing was changed)"
        assert lines[1:4] == ["  + service fresh", "  - service other", "  ~ service greeter"]
        assert "  = device knob" in lines and "  = interface face" in lines
        assert _status(name).keys() == before.keys()
        done = bussdcc("reload", name)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == f"{path}: 1 added, 1 removed, 1 restarted, 4 unchanged"
        after = _status(name)
        assert set(after) == {"knob", "spare", "greeter", "fresh"}
        assert after["knob"]["pid"] == before["knob"]["pid"] and after["greeter"]["pid"] != before["greeter"]["pid"]
        run.wait_line(
            f"{name} reloaded: added fresh; removed other; restarted greeter; 4 unchanged", err=True, timeout=60
        )
        # A broken file: one line naming the file and line, and nothing changes.
        path.write_text(_text(name).replace('id = "spare"', 'id = "spare"\nbogus = 1'))
        bad = bussdcc("reload", name)
        assert bad.returncode == 1 and bad.stdout == ""
        assert bad.stderr == f"bussdcc reload: {path}:13: devices[1].bogus: unknown key\n"
        assert {k: w["pid"] for k, w in _status(name).items()} == {k: w["pid"] for k, w in after.items()}
        run.wait_line(f"{name}: reload: {path}:13: devices[1].bogus: unknown key", err=True, timeout=60)
    finally:
        assert run.stop() == 0


@pytest.mark.timeout(180)
def test_sighup_reloads_the_file_of_bussdcc_run(tmp_path: Path) -> None:
    name = f"reload-hup{next(_names)}"
    path = tmp_path / "system.toml"
    path.write_text(_text(name))
    run = Background(["run", str(path), "-v"])
    try:
        run.wait_line(f"{name} running", err=True, timeout=60)
        before = _status(name)
        path.write_text(_text(name, level=3))
        run.proc.send_signal(signal.SIGHUP)
        run.wait_line(f"{name} reloaded: restarted knob; 5 unchanged", err=True, timeout=60)
        run.wait_line("system.reload", timeout=60)  # the seed's contract: SIGHUP says system.reload
        after = _status(name)
        assert after["knob"]["pid"] != before["knob"]["pid"]
        assert {k: w["pid"] for k, w in after.items() if k != "knob"} == {
            k: w["pid"] for k, w in before.items() if k != "knob"
        }
        done = bussdcc("call", "knob", "settings", "-r", name)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["config"] == {"level": 3}
        assert run.proc.poll() is None  # SIGHUP never ends it
    finally:
        assert run.stop() == 0


@pytest.mark.timeout(180)
def test_reload_of_a_runtime_without_a_file_is_one_clear_line() -> None:
    run = Background(["run", "tests.cli_parts:make_runtime"])
    try:
        run.wait_line("made running", err=True, timeout=60)
        done = bussdcc("reload", "made")
        assert done.returncode == 1
        assert (
            done.stderr
            == "bussdcc reload: this runtime was not started from a system file: there is nothing to re-read\n"
        )
    finally:
        assert run.stop() == 0


# ---- the runtime's own API for Processes and Interfaces ----------------------------------------------


def test_processes_and_interfaces_are_added_and_removed_at_runtime(make_runtime: Any) -> None:
    from bussdcc import Context, Event, Message, Process
    from bussdcc.errors import RegistrationError

    from .reload_parts import Face, Note

    early = Note(label="early")
    early.name = "early"
    rt, rec = make_runtime(f"reload-p{next(_names)}", boot=False)
    rt.add_process(early)  # before boot: it starts at boot
    rt.boot()
    assert rt.processes() == ["recorder", "early"]
    face = Face(label="late")
    face.name = "late"
    rt.add_process(face)
    rec.wait_for("interface.started", lambda e: getattr(e.payload, "interface", "") == "late")
    assert _hellos(rec, "late")[-1].label == "late" and rt.processes() == ["recorder", "early", "late"]
    rt.add_process(Note())  # named as its class says: "process"
    with pytest.raises(RegistrationError, match="a process named 'early' is registered already"):
        rt.add_process(early)
    rt.remove_process("late")
    rec.wait_for("interface.stopped", lambda e: getattr(e.payload, "interface", "") == "late")
    assert rt.processes() == ["recorder", "early", "process"]
    with pytest.raises(RegistrationError, match="no process or interface named 'late'"):
        rt.remove_process("late")

    refused: list[BaseException] = []

    class Meddler(Process):
        name = "meddler"

        def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
            if isinstance(evt.payload, Hello) and evt.payload.label == "meddle":
                try:
                    rt.remove_process("early")
                except RuntimeStateError as exc:
                    refused.append(exc)

    rt.add_process(Meddler())
    rt.emit(Hello(who="x", label="meddle", pid=0))
    assert len(refused) == 1 and "not a handler" in str(refused[0])
    assert "early" in rt.processes()


def test_a_changed_worker_that_fails_to_start_is_said_in_the_notes(system: Callable[[str], System]) -> None:
    name = f"reload-g{next(_names)}"
    grumpy = '\n[[services]]\nclass = "tests.reload_parts:Grumpy"\nname = "grumpy"\nrestart = false\n'
    rt, _, path = system(_text(name) + grumpy)
    assert rt.worker("grumpy").state is WorkerState.RUNNING
    path.write_text(_text(name) + grumpy + "config = { refuse = true }\n")
    out = rt.reload()
    assert out.plan.changed == ("grumpy",)
    assert rt.worker("grumpy").state is WorkerState.FAILED
    assert len(out.notes) == 1 and out.notes[0].startswith("grumpy is failed: "), out.notes
    # Fixing the file brings it back.
    path.write_text(_text(name) + grumpy)
    assert rt.reload().plan.changed == ("grumpy",)
    assert rt.worker("grumpy").state is WorkerState.RUNNING

"""Bad input at the process boundary: typed reports, never a crashed parent."""

from __future__ import annotations

import ast
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil
import pytest

from bussdcc import Context, Event, Message, Process, Runtime, Service, message
from bussdcc.errors import FrameTooLarge
from bussdcc.kernel import protocol as p

from ._helpers import Echo, MakeRuntime, Peer, Ping, Recorder, Seq, joined_worker, wait_until


class Smuggler(Service):
    """Emits, from its own process, a message class the parent has never seen."""

    name = "smuggler"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        @dataclass(slots=True, frozen=True)
        class Secret(Message):
            name = "only.in.the.worker"
            x: int

        ctx.emit(Secret(x=1))
        ctx.emit(Seq(i=1))


def test_an_unknown_message_name_is_rejected_and_the_stream_goes_on(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("unknown", Smuggler())
    (rej,) = rec.wait_for("worker.frame_rejected")
    assert isinstance(rej.payload, message.FrameRejected)
    assert rej.payload.worker == "smuggler" and "UnknownMessage" in rej.payload.error
    assert "only.in.the.worker" in rej.payload.error
    rec.wait_for("test.seq")
    assert rt.stats().rejected == 1


def test_malformed_frames_are_rejected_with_typed_errors() -> None:
    rec = Recorder()
    rt = Runtime(name="garble")
    rt.register_process(rec)
    with rt, joined_worker(rt, "garbler") as garbler:
        # A verified worker writes garbage on its own socket, then carries on normally.
        garbler.sock.send(b"\xc1 not msgpack")  # a frame that is not one
        garbler.send(p.Batch(1, [msgspec.Raw(b"\x93\x01\x02\x03")]))  # a well-numbered item that is not one
        garbler.send(p.Batch(2, [msgspec.Raw(p.encode_envelope(Seq(i=7), time.time(), "garbler"))]))
        rejected = rec.wait_for("worker.frame_rejected", count=2)
        errors = [r.payload.to_dict()["error"] for r in rejected]
        assert errors[0].startswith("MalformedFrame") and errors[1].startswith("MalformedFrame")
        # The bad item used number 1; the real message is number 2 and still arrives.
        (seq,) = rec.wait_for("test.seq")
        assert seq.payload.to_dict()["i"] == 7


def test_a_stranger_on_the_socket_is_ignored_and_counted(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("stranger", Smuggler(), Echo())
    rec.wait_for("test.seq")
    with joined_worker(rt, "joined") as joined:
        before = rt.stats().rejected
        reports = len(rec.of("worker.frame_rejected"))  # the smuggler's own, if any
        # Past the transport (a live worker's credentials) but under another routing id:
        # the checks inside must still stop it.
        stranger = Peer(rt.endpoint, b"nobody#1", credentials=joined.credentials)
        try:
            stranger.send(p.Batch(1, [msgspec.Raw(b"\x01")]))  # well formed, unknown sender
            stranger.sock.send_multipart([b"a", b"b"])  # not [identity, payload] once routed
            wait_until(lambda: rt.stats().rejected == before + 2, what="both stranger frames to be dropped")
        finally:
            stranger.close()
        # Reported, but as nobody's: strangers are not workers.
        strangers = rec.wait_for("worker.frame_rejected", count=reports + 1)[reports:]
        assert all(e.payload.to_dict()["worker"] == "" for e in strangers)
    rt.emit(Ping(n=5))  # the workers are still served
    (pong,) = rec.wait_for("test.pong")
    assert pong.payload.to_dict()["n"] == 5


class ThreadedEmitter(Service):
    """Emits from helper threads of its own, as drivers with reader threads do, while its
    main thread waits for them in user code (so they must send for themselves)."""

    name = "threads"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        def run(base: int) -> None:
            for i in range(PER_THREAD):
                ctx.emit(Seq(i=base + i, pad="x" * 1000))

        threads = [threading.Thread(target=run, args=(k * PER_THREAD,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ctx.state.set("threads.done", True)
        ctx.state.delete("threads.done")


PER_THREAD = 10_000


class SlowCounter(Process):
    """Records the Seq values in the order they are dispatched."""

    name = "slowcounter"

    def __init__(self) -> None:
        self.values: list[int] = []

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq):
            self.values.append(evt.payload.i)


def test_a_flood_from_other_threads_of_a_worker_is_bounded_and_complete() -> None:
    counter = SlowCounter()
    rec = Recorder()
    rt = Runtime(name="wthreads")
    rt.register_process(counter)
    rt.register_process(rec)
    rt.register_service(ThreadedEmitter())
    with rt:
        wait_until(lambda: len(counter.values) == 4 * PER_THREAD, timeout=60, what="every message")
        rss = psutil.Process(rt.workers()[0].pid).memory_info().rss
    total = 4 * PER_THREAD
    assert sorted(counter.values) == list(range(total))
    for k in range(4):
        mine = [v for v in counter.values if k * PER_THREAD <= v < (k + 1) * PER_THREAD]
        assert mine == sorted(mine), "each thread's messages keep their order"
    (exited,) = [e.payload for e in rec.of("worker.exited")]
    assert isinstance(exited, message.WorkerExited)
    assert exited.emitted == exited.dispatched == total + 2 and exited.lost == 0
    assert not rec.of("worker.frame_rejected")
    assert rt.state.get("threads.done") is None, "a delete in the worker reaches the parent"
    assert rss < 200 * 1024 * 1024, f"worker grew to {rss >> 20} MiB for a {total >> 10} MiB flood"


class Oversharer(Service):
    """Tries to emit and store values over the item size limit, then carries on."""

    name = "oversharer"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        try:
            ctx.emit(Seq(i=0, pad="x" * (p.MAX_ITEM + 1)))
        except FrameTooLarge as exc:
            ctx.emit(Seq(i=1, pad=type(exc).__name__))
        try:
            ctx.state.set("big", b"x" * (p.MAX_ITEM + 1))
        except FrameTooLarge as exc:
            ctx.emit(Seq(i=1, pad=type(exc).__name__))
        assert ctx.state.get("big") is None, "a refused write is not applied locally either"
        ctx.emit(Seq(i=2))


class Listener(Service):
    name = "listener"
    interval = 3600

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Seq) and evt.payload.i == 3:
            ctx.emit(Seq(i=4))


def test_oversized_items_are_refused_where_they_are_emitted(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("oversize", Oversharer(), Listener())
    seqs = rec.wait_for("test.seq", count=3)
    assert [(s.payload.to_dict()["i"], s.payload.to_dict()["pad"]) for s in seqs] == [
        (1, "FrameTooLarge"),
        (1, "FrameTooLarge"),
        (2, ""),
    ]
    # The parent refuses too, before anyone sees the message; workers keep going.
    with pytest.raises(FrameTooLarge):
        rt.emit(Seq(i=3, pad="x" * (p.MAX_ITEM + 1)))
    rt.emit(Seq(i=3))
    rec.wait_for("test.seq", lambda e: e.payload.to_dict()["i"] == 4)
    assert rt.state.get("big") is None


# ---- the import graph --------------------------------------------------------------

_SRC = Path(__file__).resolve().parent.parent / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(_SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Every module of src and the modules of src it imports (anywhere: top level, functions, TYPE_CHECKING)."""
    modules = {_module_name(path): path for path in _SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from . import x` imports the module x when there is one, else a name of the package.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            for target in targets:
                # `import a.b.c` needs a.b.c; the packages above it are not edges of ours.
                found = target
                while found and found not in modules:
                    found = found.rpartition(".")[0]
                if found and found != name:
                    edges.add(found)
                # Importing a module runs the packages above it first (those not above the importer).
                above = found.rpartition(".")[0]
                while above and not (name + ".").startswith(above + "."):
                    edges.add(above)
                    above = above.rpartition(".")[0]
        graph[name] = edges
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle_and_only_circles() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_src_imports_itself_through_others() -> None:
    graph = _import_graph()
    assert "bussdcc.supervisor._runtime" in graph and "bussdcc.kernel._context" in graph
    assert "bussdcc.supervisor._control" in graph["bussdcc.supervisor._runtime"] or any(
        "bussdcc.supervisor._control" in graph[m] for m in graph["bussdcc.supervisor._runtime"]
    )
    circles = _circles(graph)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)

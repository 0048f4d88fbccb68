"""Instructions per message and per step, counted by valgrind's callgrind, so the machine's load does not matter.

Each scenario runs under ``valgrind --tool=callgrind --dump-before=getppid``: it calls ``os.getppid()``
between its phases, so each phase gets its own counts. Scenarios: the seed's in-process ``ctx.emit`` and
its steps (in ``bench/.seed-venv``); this project's per-message steps (``Dispatch`` with one Process, no
runtime booted: valgrind 3.19 has no ``pidfd_open``, which a booted runtime needs, so the whole paths
through workers are measured by time in ``dispatch_steps.py`` and the other scripts); raw DEALER/ROUTER messages
and calls, parent side. Instructions are not time (a cache miss or a thread hand-off costs time, not
instructions), but a ratio of instructions counted the same way holds on any machine.
Usage: ``python bench/callgrind.py [--k K]`` (needs valgrind).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(__file__))

from _common import grid

HERE = os.path.dirname(os.path.abspath(__file__))


def mark() -> None:
    """End the current phase: callgrind dumps its counts on entering getppid."""
    os.getppid()


def phases(out: list[tuple[str, int]], label: str, per: int, body: Callable[[], None]) -> None:
    """Run ``body`` as one counted phase of ``per`` units, recorded as ``label``."""
    mark()
    body()
    mark()
    out.append((label, per))


def loop(fn: Callable[[], object], k: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(k):
            fn()

    return run


# ---- scenarios (inside valgrind) ---------------------------------------------------------------


def scenario_steps(k: int) -> list[tuple[str, int]]:
    """The per-message steps of this project's dispatch, without a booted runtime (see the module's note)."""
    import datetime as dt

    from dispatch import Count, Sample

    from bussdcc import Context, Event, EventBus, SystemClock
    from bussdcc.kernel import protocol as p

    d: Any = __import__("bussdcc.supervisor._dispatch", fromlist=["Dispatch", "Receiver"])
    count = Count(0)
    dispatch = d.Dispatch(EventBus(), SystemClock())
    runtime: Any = None
    ctx = Context(clock=dispatch.clock, events=dispatch.events, state=runtime, runtime=runtime, emit=dispatch.emit)
    dispatch.receivers = (d.Receiver("count", count, ctx),)
    msg = Sample(i=1, value=21.5, unit="C")
    now = dt.datetime.now(dt.UTC)
    ts = now.timestamp()
    item = p.encode_envelope(msg, ts, "w")
    raw = msgspec.Raw(item)
    env: Any = p.decode(raw, p.ITEMS)
    evt = p.envelope_event(env, "w")
    out: list[tuple[str, int]] = []
    steps: list[tuple[str, Callable[[], object]]] = [
        ("(empty loop)", lambda: None),
        ("ours: Dispatch.emit(msg), no runtime parts (rt.emit less control tap and outbox check)", lambda: dispatch.emit(msg)),
        ("ours: clock.now_utc()", dispatch.clock.now_utc),
        ("ours: Event(...)", lambda: Event(msg, now, "w")),
        ("ours: encode_envelope", lambda: p.encode_envelope(msg, ts, "runtime")),
        ("ours: Dispatch.dispatch(evt, item), no runtime parts", lambda: dispatch.dispatch(evt, item)),
        ("ours: the Process's handle_event", lambda: count.handle_event(ctx, evt)),
        ("ours: decode the item into an Envelope", lambda: p.decode(raw, p.ITEMS)),
        ("ours: decode the body into its class", lambda: p.decode_message(env.name, env.body)),
        ("ours: timestamp → datetime", lambda: dt.datetime.fromtimestamp(ts, tz=dt.UTC)),
        ("ours: envelope_event (body + datetime + Event)", lambda: p.envelope_event(env, "w")),
    ]  # fmt: skip
    for label, fn in steps:
        phases(out, label, k, loop(fn, k))
    return out


def scenario_raw(k: int) -> list[tuple[str, int]]:
    """Raw DEALER → ROUTER messages and calls, parent side (the baselines of the two above and below)."""
    from _common import short_tmp
    from dispatch import Sample, _connect_when_bound, _fork_and_bind
    from requests import Raw

    raw = Raw()
    d = short_tmp()
    endpoint = f"ipc://{d}/raw.sock"
    enc = msgspec.msgpack.Encoder()

    def child() -> None:
        ctx, s = _connect_when_bound(endpoint)
        for i in range(k):
            s.send(enc.encode(Sample(i=i, value=21.5, unit="C")))
        s.recv()
        s.close(linger=-1)
        ctx.term()

    pid, ctx, r = _fork_and_bind(child, endpoint)
    one = msgspec.msgpack.Decoder(Sample)
    sink: list[Sample] = []
    ident = b""
    mark()
    for _ in range(k):
        ident, data = r.recv_multipart()
        sink.append(one.decode(data))
    mark()
    r.send_multipart([ident, b"ack"])
    os.waitpid(pid, 0)
    r.close(0)
    ctx.term()
    shutil.rmtree(d)
    out = [("raw ROUTER: recv + msgspec decode a message, parent side", k)]

    def calls() -> None:
        raw.round_trips(k)

    phases(out, "raw DEALER/ROUTER + msgspec call, parent side", k, calls)
    raw.close()
    return out


SCENARIOS: dict[str, Callable[[int], list[tuple[str, int]]]] = {
    "steps": scenario_steps,
    "raw": scenario_raw,
}

# Under the seed's interpreter: the seed's emit, and its steps, each between two marks.
SEED_SCRIPT = """
import datetime as dt, json, os, sys
from dataclasses import dataclass
from bussdcc import Message, Process, Runtime
from bussdcc.event import Event

K = int(sys.argv[1])

@dataclass(slots=True, frozen=True)
class Sample(Message):
    i: int
    value: float
    unit: str

class Count(Process):
    name = "count"
    n = 0
    def handle_event(self, ctx, evt):
        if isinstance(evt.payload, Sample):
            self.n += 1

rt = Runtime()
rt.processes.register(Count())
rt.boot()
msg = Sample(i=1, value=21.5, unit="C")
now = rt.clock.now_utc()
out = []
def phase(label, fn):
    os.getppid()
    for _ in range(K):
        fn()
    os.getppid()
    out.append((label, K))
phase("(empty loop)", lambda: None)
phase("seed: whole: ctx.emit → Process", lambda: rt.ctx.emit(msg))
phase("seed: clock.now_utc()", rt.clock.now_utc)
phase("seed: Event(...)", lambda: Event(time=now, payload=msg))
phase("seed: EventBus.emit (the dispatch, Event made)", lambda: rt.events.emit(Event(time=now, payload=msg)))
rt.shutdown()
print("PARTS " + json.dumps(out))
"""


# ---- the driver ---------------------------------------------------------------------------------


def counted(cmd: list[str], workdir: str) -> tuple[list[tuple[str, int]], list[int]]:
    """Run ``cmd`` under callgrind; its phases and each phase's instruction count (the parent process's)."""
    out_file = os.path.join(workdir, "cg.%p")
    vg = ["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={out_file}", *cmd]
    proc = subprocess.run(vg, check=False, capture_output=True, text=True)
    parts: list[tuple[str, int]] = []
    pid = None
    for line in proc.stdout.splitlines():
        if line.startswith("PARTS "):
            parts = [tuple(x) for x in json.loads(line.removeprefix("PARTS "))]
        if line.startswith("PID "):
            pid = int(line.removeprefix("PID "))
    if not parts:
        raise SystemExit(f"{' '.join(cmd)}: no phases reported (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    if pid is None:  # the first process valgrind names is the one it started
        for line in proc.stderr.splitlines():
            if line.startswith("=="):
                pid = int(line.split("==")[1])
                break
    assert pid is not None
    counts = []
    # Phase i is between marks 2i+1 and 2i+2: the dump taken at mark 2i+2 (file suffix .2i+2).
    for i in range(len(parts)):
        with open(os.path.join(workdir, f"cg.{pid}.{2 * i + 2}")) as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("summary:"))
        counts.append(total)
    for path in glob.glob(os.path.join(workdir, "cg.*")):
        os.unlink(path)
    return parts, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2000, help="calls per phase (default 2,000)")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        print(f"PID {os.getpid()}", flush=True)
        print("PARTS " + json.dumps(SCENARIOS[args.inside](args.k)), flush=True)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("callgrind.py needs valgrind (apt-get install valgrind)")
    from seed import seed_python

    python = os.path.join(os.path.dirname(sys.executable), os.path.basename(sys.executable))
    workdir = tempfile.mkdtemp(prefix="bb-cg-", dir="/tmp")
    rows: list[tuple[str, str]] = []
    try:
        runs: list[tuple[str, list[str]]] = [
            ("seed", [seed_python(), "-c", SEED_SCRIPT, str(args.k)]),
            *((name, [python, __file__, "--inside", name, "--k", str(args.k)]) for name in SCENARIOS),
        ]
        empty: dict[str, float] = {}
        for name, cmd in runs:
            print(f"callgrind: {name} ...", flush=True)
            parts, counts = counted(cmd, workdir)
            for (label, per), ir in zip(parts, counts, strict=True):
                if label == "(empty loop)":
                    empty[name] = ir / per
                    continue
                loop_cost = empty.get(name, 0.0) * args.k / per
                rows.append((label, f"{ir / per - loop_cost:,.0f}"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    grid(
        f"instructions per unit (callgrind; K={args.k:,}; the empty loop's cost taken off the step rows)",
        ("phase", "instructions"),
        rows,
    )


if __name__ == "__main__":
    main()

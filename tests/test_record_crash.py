"""Crash safety: a recording survives a SIGKILL of the parent, read back with the ``mcap`` stream reader."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from mcap.records import Channel
from mcap.records import Message as McapMessage
from mcap.stream_reader import StreamReader

from bussdcc import Context, Event, Message, Process, Service

from . import _cli
from ._helpers import wait_until

#: Seconds between the last tick the test saw dispatched and the SIGKILL: the promise is ~0.1 s.
MARGIN = 1.0


@dataclass(slots=True, frozen=True)
class Tick(Message):
    """One of a numbered stream."""

    name = "test.crash.tick"
    i: int


class Ticker(Service):
    """Emits ticks without end, 100 at a time."""

    name = "ticker"
    interval = 0.005

    def __init__(self) -> None:
        self.i = 0

    def tick(self, ctx: Context) -> None:
        for _ in range(100):
            ctx.emit(Tick(i=self.i))
            self.i += 1


class Progress(Process):
    """Says on stderr which ticks have been dispatched (every 100th)."""

    name = "progress"

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Tick) and evt.payload.i % 100 == 99:
            os.write(2, f"dispatched {evt.payload.i}\n".encode())


_RUN = """
import sys
from bussdcc import Runtime
from tests.test_record_crash import Progress, Ticker
rt = Runtime(name="rec-crash", record=sys.argv[1])
rt.register_process(Progress())
rt.register_service(Ticker())
rt.run()
"""

_MCAP_DEFAULTS = """
import sys, time
from mcap.writer import Writer
w = Writer(open(sys.argv[1], "wb"))
w.start()
sid = w.register_schema("s", "jsonschema", b"{}")
cid = w.register_channel("t", "json", sid)
for i in range(1000):
    w.add_message(cid, log_time=i, publish_time=i, data=b'{"i":%d}' % i)
sys.stderr.write("written\\n"); sys.stderr.flush()
time.sleep(600)
"""


class Lines:
    """The stderr of a child, line by line, as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def last_dispatched(self) -> int:
        found = [int(line.split()[1]) for line in list(self.lines) if line.startswith("dispatched ")]
        return found[-1] if found else -1

    def close(self) -> None:
        self._thread.join(10)
        if self._proc.stderr is not None:
            self._proc.stderr.close()


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc`` alone, then wait for what it started to go (its workers die with it)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    _, alive = psutil.wait_procs(children, timeout=15)
    for child in alive:  # not expected: the fork server and workers follow their parent
        child.kill()
    assert not alive, f"processes outlived the killed parent: {alive}"


def _stream(path: Path) -> list[tuple[Channel, McapMessage]]:
    channels: dict[int, Channel] = {}
    out: list[tuple[Channel, McapMessage]] = []
    with path.open("rb") as f:
        try:
            for rec in StreamReader(f, skip_magic=False).records:
                if isinstance(rec, Channel):
                    channels[rec.id] = rec
                elif isinstance(rec, McapMessage):
                    out.append((channels[rec.channel_id], rec))
        except Exception:
            pass  # the record the kill cut short
    return out


def test_a_sigkilled_parent_leaves_everything_but_the_last_moments_readable(tmp_path: Path, run_base: Path) -> None:
    path = tmp_path / "crash.mcap"
    before = set(run_base.iterdir()) if run_base.exists() else set()
    proc = _cli.script(_RUN, str(path))
    lines = Lines(proc)
    try:
        wait_until(lambda: lines.last_dispatched() >= 5000 or proc.poll() is not None, timeout=60, what="ticks")
        assert proc.poll() is None, f"the runtime ended early: {lines.lines}"
        seen = lines.last_dispatched()  # dispatched at least MARGIN seconds before the kill
        time.sleep(MARGIN)
        last = lines.last_dispatched()
    finally:
        _kill_tree(proc)
        lines.close()
        for left in set(run_base.iterdir()) - before:  # a killed runtime cannot remove its run directory
            shutil.rmtree(left, ignore_errors=True)
    records = _stream(path)
    ticks = [json.loads(m.data)["i"] for c, m in records if c.topic == Tick.name]
    # Every tick up to the last one seen is there, once, in order; the stream reader stops at the cut.
    assert ticks[: seen + 1] == list(range(seen + 1))
    assert ticks == list(range(len(ticks)))
    print(f"dispatched up to {last} when killed, {len(ticks)} ticks readable")
    seqs = [m.sequence for c, m in records if c.topic == Tick.name]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert {c.metadata["worker"] for c, _ in records if c.topic == Tick.name} == {"ticker"}


def test_the_mcap_writer_defaults_lose_everything_on_sigkill(tmp_path: Path) -> None:
    # Why the recorder frames and flushes its own data section: 1 MiB chunks are never written.
    path = tmp_path / "defaults.mcap"
    proc = _cli.script(_MCAP_DEFAULTS, str(path))
    lines = Lines(proc)
    try:
        wait_until(lambda: "written" in lines.lines or proc.poll() is not None, timeout=60, what="the writes")
    finally:
        _kill_tree(proc)
        lines.close()
    assert "written" in lines.lines
    assert _stream(path) == []

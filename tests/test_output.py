"""What workers print and log reaches the parent, named, and survives their crash."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bussdcc import ThreadedRuntime

from ._cli import ROOT, bussdcc, env
from ._helpers import Recorder
from .cli_parts import Chatty

CRASHER = textwrap.dedent(
    """
    from bussdcc import Event, Message, Process, Runtime
    from tests.cli_parts import Chatty

    class Printer(Process):
        name = "printer"
        def handle_event(self, ctx, evt: Event[Message]) -> None:
            if evt.payload.name == "worker.exited":
                print("EXITED", evt.payload.to_dict(), flush=True)
                ctx.runtime.shutdown()

    rt = Runtime(name="crasher")
    rt.register_process(Printer())
    svc = Chatty(lines=2000, crash=True)
    svc.restart = False
    rt.register_service(svc)
    rt.run()
    """
)


def test_a_crashing_workers_output_is_all_shown_prefixed_before_its_exit(tmp_path: Path) -> None:
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env(), cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    exited = next(i for i, line in enumerate(lines) if line.startswith("EXITED"))
    pid = re.search(r"'pid': (\d+)", lines[exited])
    assert pid is not None and "'exit_code': 9" in lines[exited]
    prefix = f"[chatty {pid[1]}] "
    shown = [line.removeprefix(prefix) for line in lines[:exited] if line.startswith(prefix)]
    assert shown == [f"out {i}" for i in range(2000)] + ["last words"]
    assert f"{prefix}to stderr" in proc.stderr.splitlines()
    # Logging went to the parent's logging (a last-resort handler here), not out as text.
    assert "careful: hot" in proc.stderr and "ValueError: boom" in proc.stderr
    assert "bussdcc-log" not in proc.stderr


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[_Collect]:
    handler = _Collect()
    logger = logging.getLogger("tests.chatty")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_worker_logging_reaches_the_parents_logging_with_the_worker_name(
    collected: _Collect, capfd: pytest.CaptureFixture[str]
) -> None:
    rec = Recorder()
    rt = ThreadedRuntime(name="logs")
    rt.register_process(rec)
    rt.register_service(Chatty())
    rt.start(timeout=30)
    try:
        from ._helpers import wait_until

        wait_until(lambda: len(collected.records) >= 2, what="two records from the worker")
        pid = {w.name: w.pid for w in rt.workers()}["chatty"]
        first, second = collected.records[:2]
        assert (first.levelno, first.getMessage()) == (logging.WARNING, "careful: hot")
        assert first.worker == "chatty" and first.worker_pid == pid  # type: ignore[attr-defined]
        assert second.levelno == logging.ERROR and second.getMessage().startswith("it failed\nTraceback")
        assert "ValueError: boom" in second.getMessage()

        # The lines are in the control event stream too.
        done = bussdcc("events", "--name", "worker.output", "--json")
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert [(r["payload"]["stream"], r["payload"]["line"]) for r in records] == [
            ("stdout", "out 0"),
            ("stdout", "out 1"),
            ("stdout", "out 2"),
            ("stderr", "to stderr"),
        ]
        assert {r["source"] for r in records} == {"chatty"}
        # Not dispatched: Processes never see worker output.
        assert "worker.output" not in rec.names()
    finally:
        rt.stop(timeout=30)
    out, err = capfd.readouterr()
    assert f"[chatty {pid}] out 2" in out.splitlines()
    assert f"[chatty {pid}] to stderr" in err.splitlines()


def test_a_spawned_worker_in_a_fresh_interpreter_is_captured_too() -> None:
    collected = _Collect()
    logging.getLogger("tests.chatty").addHandler(collected)
    rt = ThreadedRuntime(name="spawned-output")
    rt.start(timeout=30)
    try:
        done = bussdcc("spawn", "tests.cli_parts:Chatty", "--name", "talk", "--config", '{"lines": 2}')
        assert done.returncode == 0, done.stderr
        pid = {w.name: w.pid for w in rt.workers()}["talk"]
        from ._helpers import wait_until

        wait_until(lambda: len(collected.records) >= 2, what="the spawned worker's log records")
        assert {(r.worker, r.worker_pid) for r in collected.records} == {("talk", pid)}  # type: ignore[attr-defined]
        done = bussdcc("events", "--name", "worker.output", "--json")
        lines = [json.loads(line)["payload"] for line in done.stdout.splitlines()]
        assert [(x["pid"], x["line"]) for x in lines] == [(pid, "out 0"), (pid, "out 1"), (pid, "to stderr")]
    finally:
        rt.stop(timeout=30)
        logging.getLogger("tests.chatty").removeHandler(collected)

"""A runtime started with its stdout and stderr closed (a daemon's) boots, runs workers and shuts down."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from dataclasses import dataclass
    from bussdcc import Context, Event, Message, Process, Runtime, Service

    @dataclass(slots=True, frozen=True)
    class Hi(Message):
        name = "test.closed_stdio.hi"

    class Say(Service):
        name = "say"
        interval = 3600

        def tick(self, ctx: Context) -> None:
            print("a line to a closed stdout")
            ctx.emit(Hi())

    class Hear(Process):
        name = "hear"

        def __init__(self) -> None:
            self.heard = threading.Event()

        def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
            if isinstance(evt.payload, Hi):
                self.heard.set()

    hear = Hear()
    rt = Runtime(name="closed-stdio")
    rt.register_process(hear)
    rt.register_service(Say())
    with rt:
        heard = hear.heard.wait(60)
    with open(sys.argv[1], "w") as f:
        f.write(f"{sys.stdout is None} {sys.stderr is None} {heard}")
    """
)


def test_a_runtime_with_stdout_and_stderr_closed_boots_runs_and_shuts_down(tmp_path: Path, run_base: Path) -> None:
    out = tmp_path / "result"

    def close_stdio() -> None:
        os.close(1)
        os.close(2)

    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(out)],
        stdin=subprocess.DEVNULL,
        preexec_fn=close_stdio,
        env={**os.environ, "BUSSDCC_RUN_BASE": str(run_base)},
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}"
    assert out.read_text() == "True True True"

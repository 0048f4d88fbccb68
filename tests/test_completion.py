"""Shell completion: the real ``bussdcc`` entry point, asked as bash asks it (argcomplete's protocol)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bussdcc import ThreadedRuntime

from ._cli import ROOT, env
from ._helpers import Echo, Recorder
from .cli_parts import Probe

_names = itertools.count()
SCRIPT = shutil.which("bussdcc", path=str(Path(sys.executable).parent))


def complete(line: str, tmp_path: Path, point: int | None = None) -> list[str]:
    """What TAB offers after ``line`` (the cursor at its end, or at ``point``)."""
    assert SCRIPT is not None, "the bussdcc console script is not installed"
    out = tmp_path / "completions"
    done = subprocess.run(
        [SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env(
            _ARGCOMPLETE="1",
            _ARGCOMPLETE_IFS="\n",
            _ARGCOMPLETE_SHELL="bash",
            COMP_LINE=line,
            COMP_POINT=str(len(line) if point is None else point),
            COMP_TYPE="9",  # a plain TAB
            _ARGCOMPLETE_STDOUT_FILENAME=str(out),
        ),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return sorted(w.strip() for w in out.read_text().split("\n") if w.strip())


@pytest.fixture
def live() -> Iterator[ThreadedRuntime]:
    """A runtime in this process with a Service and a Device."""
    rt = ThreadedRuntime(name=f"comp{next(_names)}")
    rt.register_process(Recorder())
    rt.register_service(Echo())
    rt.attach_device(Probe(id="probe"))
    rt.start(timeout=30)
    try:
        yield rt
    finally:
        rt.stop(timeout=30)


def test_subcommands_and_options_complete(tmp_path: Path) -> None:
    assert complete("bussdcc re", tmp_path) == ["record", "reload", "remove", "replay", "restart"]
    assert "--dry-run" in complete("bussdcc reload --", tmp_path)
    every = complete("bussdcc ", tmp_path)
    for command in ("run", "status", "reload", "stop", "call", "events"):
        assert command in every


@pytest.mark.timeout(180)
def test_worker_names_come_from_the_live_runtime(live: ThreadedRuntime, tmp_path: Path) -> None:
    names = {w.name for w in live.workers()}
    assert names == {"echo", "probe"}
    assert complete(f"bussdcc stop -r {live.name} ", tmp_path) == sorted(names)
    assert complete(f"bussdcc restart -r {live.name} ec", tmp_path) == ["echo"]
    assert complete(f"bussdcc call -r {live.name} ", tmp_path) == ["probe"]  # devices only
    # With one runtime running, it needs no name.
    assert complete("bussdcc remove ", tmp_path) == sorted(names)
    # Runtime names too.
    assert complete("bussdcc status ", tmp_path) == [live.name]


def test_no_runtime_offers_nothing_and_never_fails(tmp_path: Path) -> None:
    assert complete("bussdcc stop -r nobody ", tmp_path) == []
    assert complete("bussdcc stop ", tmp_path) == []


def test_the_entry_modules_say_they_complete() -> None:
    import bussdcc.cli

    # argcomplete's global activation looks for the marker near the top of the entry module.
    for module in (bussdcc.cli.__file__, os.path.join(os.path.dirname(bussdcc.cli.__file__), "..", "__main__.py")):
        with open(module) as f:
            assert "PYTHON_ARGCOMPLETE_OK" in f.read(1024)

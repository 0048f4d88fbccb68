"""Smaller fixes: replay imports nothing a recording names, worker_up, numeric ids, odd names, ..."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from bussdcc import Runtime, WorkerState

from ._helpers import MakeRuntime, Recorder
from ._recordings import McapRecorder


def test_replay_never_imports_a_module_the_recording_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "polish_planted.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from dataclasses import dataclass\n"
        "from bussdcc import Message\n"
        "@dataclass(slots=True, frozen=True)\n"
        "class Planted(Message):\n"
        "    name = 'polish.planted'\n"
        "    x: int = 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "planted.mcap"
    rec = McapRecorder(path)
    for _ in range(2):
        rec.raw("polish.planted", b'{"x": 1}', class_path="polish_planted:Planted")
    rec.close()
    rt = Runtime(name="replay-planted")
    recorder = Recorder()
    rt.register_process(recorder)
    with caplog.at_level(logging.WARNING, logger="bussdcc.replay"):
        report = rt.replay(path, speed=None)
    assert not marker.exists() and "polish_planted" not in sys.modules
    assert report.unreadable == {"polish.planted": 2}
    assert not recorder.of("polish.planted")
    (warned,) = [r.getMessage() for r in caplog.records if r.name == "bussdcc.replay"]
    assert "polish_planted:Planted" in warned and "import" in warned


def test_worker_up_is_1_while_the_process_is_up_even_unhealthy(make_runtime: MakeRuntime) -> None:
    from .test_health import Flow
    from .test_http_metrics import samples, scrape

    svc = Flow("sulking")  # no gate: it never emits what it is expected to
    svc.expect = {"test.health.reading": 0.5}
    svc.on_unhealthy = "report"
    rt, _ = make_runtime("polish-up", svc, http="127.0.0.1:0")
    rt.wait_for_worker("sulking", WorkerState.UNHEALTHY)
    got = samples(scrape(rt))
    labels = (("role", "service"), ("worker", "sulking"))
    assert got["bussdcc_worker_state", (*labels[:1], ("state", "unhealthy"), *labels[1:])] == 1.0
    assert got["bussdcc_worker_up", labels] == 1.0

"""Session rules: every test has a timeout, and no test may leave a process or run directory."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bussdcc import Device, Runtime, Service

from ._helpers import Recorder, System

_BASE = Path(tempfile.mkdtemp(prefix="bdt-", dir="/tmp"))
os.environ["BUSSDCC_RUN_BASE"] = str(_BASE)  # short, so ipc:// paths fit in sun_path


def _descendants() -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a child process or a run directory behind."""
    before = {p.pid for p in _descendants()}
    yield
    # Children being reaped right now get a bounded moment to go.
    _, alive = psutil.wait_procs([p for p in _descendants() if p.pid not in before], timeout=3)
    leftovers = sorted(_BASE.iterdir()) if _BASE.exists() else []
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    threads = [t.name for t in threading.enumerate() if t.name.startswith("bussdcc-")]
    assert not alive, f"test left processes behind: {[(p.pid, p.name()) for p in alive]}"
    assert not threads, f"test left runtime threads running: {threads}"
    assert not leftovers, f"test left run directories behind: {leftovers}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_BASE, ignore_errors=True)


@pytest.fixture
def run_base() -> Path:
    """The base directory this session's runtimes make their run directories in."""
    return _BASE


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., tuple[Runtime, Recorder]]]:
    """Build, register and boot a runtime with a Recorder; whatever happens, it is shut down after the test.

    ``make_runtime(name, *workers, boot=True, **options)``: Devices are attached and
    Services registered in the order given, ``options`` go to :class:`Runtime`;
    returns the runtime and its Recorder.
    """
    made: list[Runtime] = []

    def make(name: str, *workers: Service | Device, boot: bool = True, **options: Any) -> tuple[Runtime, Recorder]:
        rec = Recorder()
        rt = Runtime(name=name, **options)
        made.append(rt)
        rt.register_process(rec)
        for worker in workers:
            rt.add_worker(worker)
        if boot:
            rt.boot()
        return rt, rec

    yield make
    for rt in reversed(made):
        rt.shutdown()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[[str], System]]:
    """A booted runtime made from a system file (as ``bussdcc run`` makes it), with a Recorder."""
    from bussdcc.cli._config import load_system
    from bussdcc.cli._reload import Reloader, register

    made: list[Runtime] = []

    def make(text: str) -> System:
        path = tmp_path / "system.toml"
        path.write_text(text)
        spec = load_system(path)
        rt = Runtime(name=spec.name)
        made.append(rt)
        rec = Recorder()
        rt.register_process(rec)
        register(rt, spec)
        rt.set_reloader(Reloader(path, spec, rt))
        rt.boot()
        return rt, rec, path

    yield make
    for rt in reversed(made):
        rt.shutdown()

"""Running the real ``bussdcc`` command, and runtimes for it to talk to."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PLANT = ROOT / "examples" / "plant.toml"


def env(**extra: str) -> dict[str, str]:
    """The environment of a command: this test run's base directory, and the tests importable."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "examples"), out.get("PYTHONPATH", "")])
    out.update(extra)
    return out


def bussdcc(*args: str, timeout: float = 60.0, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bussdcc ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bussdcc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**extra),
        cwd=ROOT,
        check=False,
    )


def script(source: str, *args: str) -> subprocess.Popen[str]:
    """``python -c SOURCE ARGS`` started beside the test, the tests importable; stderr is piped (text)."""
    return subprocess.Popen(
        [sys.executable, "-c", source, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=ROOT,
    )


class Background:
    """``python -m bussdcc ARGS`` running in the background, its output read line by line as it comes."""

    def __init__(self, args: Sequence[str], **extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bussdcc", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(**extra),
            cwd=ROOT,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, needle: str, *, err: bool = False, timeout: float = 20.0) -> str:
        """The first line (of stdout, or stderr) containing ``needle``."""
        lines = self.err if err else self.out
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in lines:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(r.is_alive() for r in self._readers)):
                    raise AssertionError(f"{needle!r} never appeared; stdout {self.out}, stderr {self.err}")
                self._cond.wait(min(left, 0.2))

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the command to end; its exit code."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    def stop(self, timeout: float = 20.0) -> int:
        """End the command (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(timeout)

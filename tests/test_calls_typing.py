"""mypy --strict knows a call's argument and result types: it rejects wrong calls."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = """\
from bussdcc import Device, Runtime


class Motor(Device):
    kind = "motor"

    def move(self, position: float, speed: float = 1.0) -> float:
        return position * speed


class Relay(Device):
    def switch(self, on: bool) -> bool:
        return on


rt = Runtime()
motor = rt.device(Motor, "axis-1", timeout=1.0)
reached: float = motor.call(Motor.move, 12.5, speed=2.0)
reveal_type(motor.call(Motor.move, 12.5))
motor.call(Motor.move, "far")  # E: arg-type
motor.call(Motor.move, 1.0, sped=2.0)  # E: call-arg
label: str = motor.call(Motor.move, 1.0)  # E: assignment
motor.call(Relay.switch, True)  # E: arg-type
motor.call(Motor.move)  # E: call-arg
motor.call(Motor.move, 1.0, timeout=1.0)  # E: call-arg
motor.options(timeout=0.5).call(Motor.move, 1.0, speed=2.0)


async def from_asyncio() -> None:
    ok: float = await motor.acall(Motor.move, 12.5)
    bad: str = await motor.acall(Motor.move, 12.5)  # E: arg-type
"""


def test_mypy_rejects_wrongly_typed_calls_and_knows_the_result_type(tmp_path: Path) -> None:
    path = tmp_path / "calls_snippet.py"
    path.write_text(SNIPPET)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", str(path)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    found: dict[int, set[str]] = {}
    for line in out.splitlines():
        m = re.match(r".*calls_snippet\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            found.setdefault(int(m[1]), set()).add(m[2])
    expected = {
        n: {m[1]} for n, text in enumerate(SNIPPET.splitlines(), 1) if (m := re.search(r"# E: ([a-z-]+)$", text))
    }
    assert {n: codes & expected.get(n, codes) for n, codes in found.items()} == expected, out
    reveal = next(n for n, text in enumerate(SNIPPET.splitlines(), 1) if text.startswith("reveal_type"))
    assert re.search(rf'calls_snippet\.py:{reveal}: note: Revealed type is "(builtins\.)?float"', out), out

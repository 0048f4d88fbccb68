"""``make demo``: run ``plant.toml`` with the ``bussdcc`` command and watch it live.

Starts ``bussdcc run examples/plant.toml``, shows ``bussdcc status`` a few
times while the flaky sensor crashes and comes back, restarts the controller,
shows the last events, and shuts the runtime down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bussdcc(*args: str) -> str:
    """Run one command and return what it printed."""
    done = subprocess.run([sys.executable, "-m", "bussdcc", *args], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def main(rounds: int = 4, every: float = 2.0) -> int:
    """The demo; its exit code."""
    # A run base of its own, so `bussdcc status` finds this runtime and no other.
    os.environ["BUSSDCC_RUN_BASE"] = tempfile.mkdtemp(prefix="bdemo-", dir="/tmp")
    plant = subprocess.Popen(
        [sys.executable, "-m", "bussdcc", "run", str(HERE / "plant.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert plant.stderr is not None
        print("$ bussdcc run examples/plant.toml &")
        print(plant.stderr.readline().rstrip())
        for i in range(rounds):
            time.sleep(every)
            print(f"\n$ bussdcc status        # {i + 1}/{rounds}")
            print(bussdcc("status").rstrip())
            if i == 1:
                print("\n$ bussdcc restart controller")
                print(bussdcc("restart", "controller").rstrip())
        print("\n$ bussdcc events -n 8 --severity INFO")
        print(bussdcc("events", "-n", "8", "--severity", "INFO").rstrip())
        print("\n$ bussdcc shutdown")
        print(bussdcc("shutdown").rstrip())
        return plant.wait(30)
    finally:
        if plant.poll() is None:
            plant.terminate()
            plant.wait(30)
        os.rmdir(os.environ["BUSSDCC_RUN_BASE"])


if __name__ == "__main__":
    raise SystemExit(main())

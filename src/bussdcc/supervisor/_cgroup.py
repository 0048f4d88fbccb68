"""Whether the kernel's OOM killer struck a worker: its memory cgroup counts the kills.

Cgroup v2 keeps the count in ``memory.events``, v1 in ``memory.oom_control`` (line
``oom_kill N`` in both). Nothing here raises: where there is no such file, there is no answer.
"""

from __future__ import annotations

from pathlib import Path

_V2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
_V1_MEMORY = Path("/sys/fs/cgroup/memory")


def oom_kills(counter: Path) -> int | None:
    """The ``oom_kill`` count in ``counter``, or None if it cannot be read."""
    try:
        for line in counter.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def oom_counter(pid: int) -> tuple[Path, int] | None:
    """The file counting OOM kills in process ``pid``'s memory cgroup, and its count now (None if unknown)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        where = path.lstrip("/")
        if controllers == "":  # the unified (v2) hierarchy
            candidates = [root / where / "memory.events" for root in _V2_ROOTS]
        elif "memory" in controllers.split(","):
            candidates = [_V1_MEMORY / where / "memory.oom_control"]
        else:
            continue
        for counter in candidates:
            count = oom_kills(counter)
            if count is not None:
                return counter, count
    return None

"""Review: a pool can never be asked for more workers than the runtime can run at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from bussdcc import Device, Service
from bussdcc.cli._config import load_system
from bussdcc.errors import ConfigError, RegistrationError
from bussdcc.kernel._boundary import WORKER_SLOTS

from ._helpers import MakeRuntime
from .decl_parts import service


class _TooMany(Exception):
    """Raised by a test's make() once it has made more members than any runtime can run."""


def _counting(limit: int) -> tuple[list[str], object]:
    made: list[str] = []

    def make(name: str) -> Service | Device:
        made.append(name)
        if len(made) > limit:
            raise _TooMany(name)
        return service(name)

    return made, make


def test_a_pool_beyond_the_worker_slots_is_refused_before_any_member_is_made(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("review-pool-cap", boot=False)
    made, make = _counting(WORKER_SLOTS + 10)
    with pytest.raises(RegistrationError, match="instances"):
        rt.add_pool("crowd", make, 10**9)  # type: ignore[arg-type]
    assert made == []


def test_scaling_beyond_the_worker_slots_starts_nothing(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("review-scale-cap", boot=False)
    # More than a runtime could ever run at once: refused as it stands, not one fork after another
    # until the slots run out (make() stops that here after two members, should the check be missing).
    made, make = _counting(2)
    rt.add_pool("crowd", make, 1)  # type: ignore[arg-type]
    rt.boot()
    with pytest.raises(RegistrationError, match="instances"):
        rt.scale("crowd", 10**6)
    assert made == ["crowd-0"]
    assert rt.pools() == {"crowd": 1}
    assert [w.name for w in rt.workers()] == ["crowd-0"]


def test_a_system_file_pool_beyond_the_worker_slots_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "crowd.toml"
    path.write_text(
        f'[[services]]\nname = "crowd"\nclass = "tests.decl_parts:Reporter"\ninstances = {WORKER_SLOTS + 1}\n'
    )
    with pytest.raises(ConfigError, match=r"crowd.toml:4: services\[0\]\.instances: ") as info:
        load_system(path)
    assert "\n" not in str(info.value)

"""Review: settings the checks accept work as set, however large."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bussdcc import Context, Event, Message, Service
from bussdcc.cli._config import load_system
from bussdcc.errors import ConfigError

from ._helpers import MakeRuntime, Ping, Pong

#: Thirty days: a valid interval, but more milliseconds than a C int holds (zmq_poll's timeout).
MONTH = 30 * 24 * 3600.0


class Monthly(Service):
    """Ticks once a month and answers every Ping from its own process meanwhile."""

    name = "monthly"
    interval = MONTH

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            ctx.emit(Pong(n=evt.payload.n, pid=os.getpid()))


def test_a_service_that_ticks_once_a_month_keeps_running(make_runtime: MakeRuntime) -> None:
    rt, rec = make_runtime("review-monthly", Monthly())
    rt.emit(Ping(n=1))
    rec.wait_for("test.pong", timeout=30)
    assert rec.of("worker.exited") == [], [e.payload for e in rec.of("worker.exited")]
    assert rt.worker("monthly").incarnation == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="user/group need a runtime running as root (as on CI)")
@pytest.mark.parametrize("key", ["user", "group"])
def test_a_user_or_group_name_with_a_nul_byte_is_one_line(tmp_path: Path, key: str) -> None:
    path = tmp_path / "nul.toml"
    path.write_text(f'[[services]]\nname = "a"\nclass = "tests.decl_parts:Reporter"\n{key} = "ro\\u0000ot"\n')
    with pytest.raises(ConfigError, match=rf"nul.toml:4: services\[0\]\.{key}: {key} 'ro\\x00ot' does not exist"):
        load_system(path)

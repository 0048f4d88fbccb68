"""Hot spares when the environment refuses a fork: the spare is only a head start, never a failure."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from ._helpers import MakeRuntime, wait_until
from .test_spare import Counted, _started, _started_as, _story, _sup, _waiting

pytestmark = pytest.mark.timeout(120)


def test_a_fork_server_out_of_fds_forks_no_spare_and_says_nothing_then_spares_come_back(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    log = tmp_path / "starts"
    rt, rec = make_runtime("spare-emfile", Counted("hot", log), Counted("cold", tmp_path / "cold", spare=False))
    first = _started_as(rec, "hot", 1)
    cold_first = _started_as(rec, "cold", 1)
    spare = _waiting(rt, "hot", 2)
    assert spare.pid is not None
    server_pid = rt.stats().fork_server_pid
    assert server_pid is not None
    server = psutil.Process(server_pid)
    soft, hard = server.rlimit(psutil.RLIMIT_NOFILE)
    # At its fd limit: the descriptors the dead worker frees are too few for a fork (two pipes and a pidfd).
    used = {int(fd) for fd in os.listdir(f"/proc/{server_pid}/fd")}
    server.rlimit(psutil.RLIMIT_NOFILE, (min(set(range(len(used) + 1)) - used), hard))
    try:
        os.kill(first, signal.SIGKILL)
        # The respawn needs no fork: the spare that waited runs.
        assert _started_as(rec, "hot", 2) == spare.pid
        # Its own spare cannot be forked: tried a bounded number of times, then none.
        worker = _sup(rt).workers["hot"]
        rec.wait_for("service.started", lambda e: e.payload.to_dict()["service"] == "hot", count=2, timeout=30)
        wait_until(lambda: worker.spare is None and worker.spares_left == 0, 30, "the refused spares given up")
    finally:
        server.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
    # Nothing was said of the spares the fork server could not make: the worker's story is a plain respawn.
    os.kill(cold_first, signal.SIGKILL)
    _started_as(rec, "cold", 2)
    rec.wait_for("service.started", lambda e: e.payload.to_dict()["service"] == "cold", count=2, timeout=30)
    assert _story(rec, "hot") == _story(rec, "cold")
    assert rt.worker("hot").state == "running"
    # With the limit lifted, a respawn forks as a worker without a spare does, and spares come back.
    os.kill(spare.pid, signal.SIGKILL)
    third = _started_as(rec, "hot", 3)
    assert third not in (first, spare.pid)
    again = _waiting(rt, "hot", 4)
    assert again.pid not in (first, spare.pid, third)
    assert _started(log) == [first, spare.pid, third], "no spare ran code of its own"

"""Authentication at the transport: a stranger cannot complete a ZMTP handshake, so cannot hold the parent's fds."""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from bussdcc import Runtime
from bussdcc.kernel import _builtin as m

from . import _cli
from ._cli import Background, bussdcc
from ._helpers import Echo, MakeRuntime, Ping, Recorder, wait_until

_names = itertools.count()

_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH


def _handshake(path: Path, credentials: tuple[bytes, bytes] | None) -> tuple[int, bool]:
    """Connect a DEALER to ``path`` (NULL, or PLAIN with ``credentials``); its events until it is turned away.

    Returns the events seen (or-ed together) and whether a request sent meanwhile got any answer.
    """
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        sock.setsockopt(zmq.PLAIN_USERNAME, credentials[0])
        sock.setsockopt(zmq.PLAIN_PASSWORD, credentials[1])
    monitor = sock.get_monitor_socket()
    seen = 0
    try:
        sock.connect(f"ipc://{path}")
        try:
            sock.send(b"\x93hello?", zmq.NOBLOCK)  # queued: sent only if the handshake completes
        except zmq.Again:
            pass  # turned away already, its pipe gone: there is nothing to queue the request on
        deadline = time.monotonic() + 30
        # Turned away: a handshake failure, then the connection closed by one side or the other.
        while not (seen & _FAILED and seen & zmq.EVENT_DISCONNECTED) and time.monotonic() < deadline:
            if monitor.poll(200):
                seen |= int(recv_monitor_message(monitor)["event"])
        answered = bool(sock.poll(300))
        return seen, answered
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
        zctx.term()


def _status(name: str) -> dict[str, object]:
    done = bussdcc("status", name, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def _everything_still_works(rt: Runtime, rec: Recorder, tag: str) -> None:
    """Real workers, ``status``, ``worker --connect`` and ``events -f`` are unaffected by the strangers."""
    assert rt.run_dir is not None
    rt.emit(Ping(n=1))
    rec.wait_for("test.pong", lambda e: e.payload.n == 1, timeout=30)  # type: ignore[attr-defined]
    assert _status(rt.name)["runtime"]["name"] == rt.name  # type: ignore[index]
    follower = Background(["events", "-f", "-n", "0", "--json", "--name", "test.beep", "--run-dir", str(rt.run_dir)])
    name = f"solo-{tag}"
    worker = Background(["worker", "--connect", str(rt.run_dir), "tests.cli_parts:Beeper", "--name", name])
    try:
        rec.wait_for("test.beep", lambda e: e.source == name, timeout=30)
        follower.wait_line('"test.beep"', timeout=30)
        done = bussdcc("stop", name, "--run-dir", str(rt.run_dir))
        assert done.returncode == 0, done.stderr
        assert worker.wait(30) == 0
    finally:
        worker.stop()
        follower.stop()


def test_a_stranger_without_credentials_is_turned_away_at_the_handshake(
    make_runtime: MakeRuntime,
) -> None:
    rt, rec = make_runtime(f"auth{next(_names)}", Echo())
    assert rt.run_dir is not None
    for sock in ("workers.sock", "control.sock"):
        seen, answered = _handshake(rt.run_dir / sock, None)
        assert not seen & zmq.EVENT_HANDSHAKE_SUCCEEDED, (sock, seen)
        assert seen & _FAILED and seen & zmq.EVENT_DISCONNECTED, (sock, seen)
        assert not answered
    _everything_still_works(rt, rec, "null")


def test_a_stranger_with_wrong_credentials_is_refused_counted_and_reported_in_batches(
    make_runtime: MakeRuntime,
) -> None:
    rt, rec = make_runtime(f"auth{next(_names)}", Echo())
    assert rt.run_dir is not None
    before = rt.stats().rejected
    for sock, credentials in (
        ("workers.sock", (b"0123456789abcdef0123456789abcdef", b"guess" * 6)),
        ("control.sock", (b"bussdcc", b"not the secret")),
    ):
        seen, answered = _handshake(rt.run_dir / sock, credentials)
        assert not seen & zmq.EVENT_HANDSHAKE_SUCCEEDED, (sock, seen)
        assert seen & zmq.EVENT_HANDSHAKE_FAILED_AUTH, (sock, seen)
        assert not answered
    wait_until(lambda: rt.stats().rejected >= before + 2, timeout=30, what="both refusals to be counted")
    reported = rec.wait_for("worker.frame_rejected", lambda e: "handshake" in str(e.payload), timeout=30)
    assert isinstance(reported[0].payload, m.FrameRejected) and reported[0].payload.worker == ""

    # A burst of guesses is counted one by one and reported in summaries, not a message each.
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = []
    burst = 100
    try:
        start = rt.stats().rejected
        for n in range(burst):
            s = zctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RECONNECT_IVL, 60_000)  # one guess each
            s.setsockopt(zmq.PLAIN_USERNAME, b"bussdcc")
            s.setsockopt(zmq.PLAIN_PASSWORD, b"guess %d" % n)
            s.connect(f"ipc://{rt.run_dir / 'control.sock'}")
            socks.append(s)
        wait_until(lambda: rt.stats().rejected >= start + burst, timeout=60, what="every guess to be counted")

        def summarised() -> int:
            return max(
                (e.payload.count for e in rec.of("worker.frame_rejected")),  # type: ignore[attr-defined]
                default=0,
            )

        wait_until(lambda: summarised() > 1, timeout=30, what="a summary of several refusals")
        reports = [e for e in rec.of("worker.frame_rejected") if isinstance(e.payload, m.FrameRejected)]
        assert len(reports) < burst
    finally:
        for s in socks:
            s.close(0)
        zctx.term()
    _everything_still_works(rt, rec, "plain")


_LIMITED_RUN = """
import resource, runpy, sys

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))
sys.argv = ["bussdcc", "run", "tests.cli_parts:make_runtime", "--name", "besieged"]
runpy.run_module("bussdcc", run_name="__main__")
"""

_FLOOD = """
import os, resource, sys, time, zmq
from zmq.utils.monitor import recv_monitor_message

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
count, links = int(sys.argv[1]), sys.argv[2]
zctx = zmq.Context()
socks, poller = [], zmq.Poller()
for k, path in enumerate(sys.argv[3:]):
    # A socket connects once to each endpoint: a hundred names for the same socket file.
    names = []
    for i in range(100):
        names.append(os.path.join(links, f"{k}-{i}"))
        os.symlink(path, names[-1])
    for n in range(count // 100):
        s = zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 2000)  # a stranger that keeps trying, not a busy loop
        poller.register(s.get_monitor_socket(zmq.EVENT_CONNECTED), zmq.POLLIN)
        for name in names:
            s.connect("ipc://" + name)
        socks.append(s)
# Until every connection reached the parent (its listener took it) at least once, or a while.
connected, deadline = set(), time.monotonic() + 30
while len(connected) < len(socks) * 100 and time.monotonic() < deadline:
    for monitor, _ in poller.poll(500):
        connected.add((monitor, recv_monitor_message(monitor)["endpoint"]))
for s in socks:
    s.disable_monitor()
print("connected", len(connected), flush=True)
sys.stdin.read()  # until told to let go
"""


@pytest.mark.timeout(180)
def test_thousands_of_stranger_connections_to_both_sockets_leave_the_parent_alive(run_base: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 8192:
        pytest.skip(f"the hard fd limit ({hard}) is too low for a stranger holding 6,000 connections")
    runtime = _cli.script(_LIMITED_RUN)
    stranger: subprocess.Popen[str] | None = None
    links = tempfile.mkdtemp(prefix="flood-", dir="/tmp")  # short paths: sun_path holds 107 bytes
    try:
        assert runtime.stderr is not None
        line = runtime.stderr.readline()
        assert "besieged running" in line, line
        (run_dir,) = run_base.iterdir()
        assert resource.prlimit(runtime.pid, resource.RLIMIT_NOFILE)[0] == 4096  # raised at boot
        stranger = subprocess.Popen(
            [sys.executable, "-c", _FLOOD, "3000", links, str(run_dir / "workers.sock"), str(run_dir / "control.sock")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert stranger.stdout is not None
        said = stranger.stdout.readline().split()
        assert said[0] == "connected" and int(said[1]) >= 3000, said
        assert runtime.poll() is None
        fds = f"/proc/{runtime.pid}/fd"
        # Held open by the stranger, yet not by the parent: each was closed at its handshake.
        wait_until(lambda: len(os.listdir(fds)) < 200, 60, "the strangers' connections to be closed")
        assert runtime.poll() is None
        status = bussdcc("status", "besieged", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["runtime"]["pid"] == runtime.pid
        assert all(w["state"] == "running" for w in data["workers"]), data["workers"]
        stranger.kill()
        stranger.communicate()
        done = bussdcc("shutdown", "besieged", "--timeout", "60")
        assert done.returncode == 0, done.stderr
        assert runtime.wait(60) == 0
        assert not run_dir.exists()
    finally:
        if stranger is not None and stranger.poll() is None:
            stranger.kill()
            stranger.communicate()
        if runtime.poll() is None:
            runtime.kill()
        runtime.communicate()
        shutil.rmtree(links, ignore_errors=True)

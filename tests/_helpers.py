"""Components and waits shared by the tests: react to events, never sleep and hope."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
import zmq

from bussdcc import Context, Event, Message, Process, Runtime, Service, WorkerState
from bussdcc.cli._client import Client
from bussdcc.kernel import protocol as p

T = TypeVar("T")


#: Set by .ci/run: there, a test that needs an outside tool fails instead of skipping when it is absent.
REQUIRE_TOOLS_ENV = "BUSSDCC_REQUIRE_TOOLS"


def missing_tool(reason: str) -> NoReturn:
    """Skip the test for want of an outside tool (fail instead where CI promised to install it)."""
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_TOOLS_ENV}=1 says it must be there")
    pytest.skip(reason)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Return the first truthy value of ``predicate`` within ``timeout`` or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def first_incarnation(marker: str) -> bool:
    """True the first time any process asks about ``marker`` (a file it creates atomically), False ever after.

    How a worker misbehaves in its first incarnation only: its respawns find the file.
    """
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def lose_the_fork_server(rt: Runtime, timeout: float = 30.0) -> None:
    """SIGKILL the runtime's fork server; return once the runtime has halted by itself, saying why."""
    pid = rt.stats().fork_server_pid
    assert pid is not None, "the runtime is up"
    os.kill(pid, signal.SIGKILL)
    assert rt.wait(timeout), "the runtime halts by itself"
    assert rt.halt_reason is not None and "fork server" in rt.halt_reason, rt.halt_reason


class Recorder(Process):
    """A Process that records every event and lets a test wait for one."""

    name = "recorder"

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.events: list[Event[Message]] = []
        self._cond = threading.Condition()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        with self._cond:
            self.events.append(evt)
            self._cond.notify_all()

    def trim(self, keep: int) -> None:
        """Forget all but the last ``keep`` events."""
        with self._cond:
            del self.events[:-keep]

    def names(self) -> list[str]:
        with self._cond:
            return [e.payload.name for e in self.events]

    def of(self, name: str) -> list[Event[Message]]:
        with self._cond:
            return [e for e in self.events if e.payload.name == name]

    def wait_for(
        self, name: str, where: Callable[[Event[Message]], bool] = lambda e: True, count: int = 1, timeout: float = 10.0
    ) -> list[Event[Message]]:
        """Block until ``count`` events named ``name`` matching ``where`` were recorded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.payload.name == name and where(e)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {count} x {name}; saw {self.names_locked()}")
                self._cond.wait(left)

    def names_locked(self) -> list[str]:
        names = [e.payload.name for e in self.events]
        return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


# ---- messages the test components exchange ------------------------------------------

from dataclasses import dataclass  # noqa: E402


@dataclass(slots=True, frozen=True)
class Where(Message):
    """Reports the pid a component's code ran in."""

    name = "test.where"
    who: str
    step: str
    pid: int


@dataclass(slots=True, frozen=True)
class Ping(Message):
    """A numbered request."""

    name = "test.ping"
    n: int


@dataclass(slots=True, frozen=True)
class Pong(Message):
    """A numbered answer, with the pid that answered."""

    name = "test.pong"
    n: int
    pid: int


@dataclass(slots=True, frozen=True)
class Seq(Message):
    """One item of a numbered stream."""

    name = "test.seq"
    i: int
    pad: str = ""


class Echo(Service):
    """Answers every Ping, from its own process."""

    name = "echo"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Ping):
            ctx.emit(Pong(n=evt.payload.n, pid=os.getpid()))


# ---- a worker spoken by hand ------------------------------------------------------------


class Peer:
    """A DEALER on the workers' socket speaking the project's protocol (a worker, or an impostor)."""

    def __init__(self, endpoint: str, identity: bytes, *, credentials: tuple[bytes, bytes] | None = None) -> None:
        """``credentials``: (username, password) for the handshake; by default none (a stranger)."""
        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, identity)
        self.credentials = credentials
        if credentials is not None:
            self.sock.setsockopt(zmq.PLAIN_USERNAME, credentials[0])
            self.sock.setsockopt(zmq.PLAIN_PASSWORD, credentials[1])
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)
        self.sock.connect(endpoint)

    def send(self, frame: object) -> None:
        self.sock.send(p.encode(frame))

    def request(self, frame: p.Request, timeout: float = 30.0) -> p.Reply:
        """Send a worker's call request and return the parent's reply to it (other frames are skipped)."""
        deadline = time.monotonic() + timeout
        self.send(frame)
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000)):
                got = p.decode(self.sock.recv(), p.PARENT_FRAMES)
                if isinstance(got, p.Reply) and got.call_id == frame.call_id:
                    return got
        raise AssertionError(f"no reply to call {frame.call_id} within {timeout}s")

    def close(self) -> None:
        self.sock.close(0)
        self.zctx.term()


@contextlib.contextmanager
def joined_worker(rt: Runtime, name: str) -> Iterator[Peer]:
    """A standalone worker joined through the control plane and spoken by hand (a ``sleep`` stands for its pid)."""
    assert rt.run_dir is not None
    stand_in = subprocess.Popen(["sleep", "600"])
    try:
        with Client(rt.run_dir) as client:
            joined = client.call(
                p.JoinRequest(client.secret, "tests._helpers:Echo", name, stand_in.pid, None, {"restart": False}), 30
            )
        assert isinstance(joined, p.Joined), joined
        peer = Peer(joined.endpoint, joined.identity, credentials=(joined.identity, joined.token))
        try:
            peer.send(p.Hello(stand_in.pid, joined.token))
            peer.send(p.Ready())
            rt.wait_for_worker(name, WorkerState.RUNNING)
            yield peer
        finally:
            peer.close()
    finally:
        stand_in.kill()
        stand_in.wait()


#: The ``make_runtime`` fixture: ``make_runtime(name, *workers, boot=True) -> (runtime, recorder)``.
MakeRuntime = Callable[..., tuple[Runtime, Recorder]]


#: What the ``system`` fixture makes: a booted runtime, its Recorder, and the system file.
System = tuple[Runtime, Recorder, Path]


def pids(rt: Runtime) -> dict[str, int | None]:
    """Each worker's pid, by name."""
    return {w.name: w.pid for w in rt.workers()}

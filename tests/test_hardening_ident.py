"""Only the processes the runtime made can speak as its workers: impostors are shut out and reported."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import msgspec
import pytest
import zmq

from bussdcc import Device, Message, Runtime, WorkerState, message
from bussdcc.cli._client import Client
from bussdcc.errors import DeviceCrashed
from bussdcc.kernel import protocol as p

from ._helpers import Echo, Ping, Recorder, joined_worker, wait_until


@dataclass(slots=True, frozen=True)
class Forged(Message):
    """What an impostor would have the runtime dispatch as the device's own word."""

    name = "test.forged"
    text: str


class Valve(Device):
    """A device whose answers say which process gave them."""

    kind = "valve"

    def whoami(self) -> str:
        return f"real {os.getpid()}"

    def pid(self) -> int:
        return os.getpid()

    def nap(self, seconds: float) -> None:
        time.sleep(seconds)


FORGED = msgspec.Raw(p.encode("forged"))


class Impostor:
    """A same-user peer on the workers' socket: a DEALER speaking the project's own protocol.

    The transport admits only a live incarnation's id and token: without ``credentials``
    it guesses (and is turned away at the handshake); with a live worker's, it stands
    for a peer that got past the transport, which the checks inside must still stop.
    """

    def __init__(self, endpoint: str, identity: bytes, credentials: tuple[bytes, bytes] | None = None) -> None:
        self.zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 60_000)  # turned away: one try, counted once
        username, password = credentials or (identity, b"\0" * 32)
        self.sock.setsockopt(zmq.PLAIN_USERNAME, username)
        self.sock.setsockopt(zmq.PLAIN_PASSWORD, password)
        self.sock.setsockopt(zmq.SNDTIMEO, 10_000)
        self.sock.connect(endpoint)
        self.calls_seen = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, frame: object) -> None:
        with self._lock:
            self.sock.send(p.encode(frame))

    def send_raw(self, *parts: bytes) -> None:
        with self._lock:
            self.sock.send_multipart(list(parts))

    def answer_calls(self) -> None:
        """Answer every call routed here with a forged value, as the device would."""

        def main() -> None:
            while not self._stop.is_set():
                with self._lock:
                    frame = p.decode(self.sock.recv(), p.PARENT_FRAMES) if self.sock.poll(0) else None
                    if isinstance(frame, p.Call):
                        self.calls_seen += 1
                        self.sock.send(p.encode(p.Reply(frame.call_id, FORGED)))
                self._stop.wait(0.005)

        self._thread = threading.Thread(target=main, name="impostor")
        self._thread.start()

    def __enter__(self) -> Impostor:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sock.close(0)
        self.zctx.term()


def _connected(rt: Runtime, impostor: Impostor) -> None:
    """Wait until the runtime has heard the impostor once (its connection exists)."""
    before = rt.stats().rejected
    impostor.send_raw(b"probe")
    wait_until(lambda: rt.stats().rejected > before, what="the impostor's probe to be rejected")


def test_an_impostor_of_the_next_incarnation_is_shut_out_and_reported() -> None:
    rec = Recorder()
    rt = Runtime(name="ident-next")
    rt.register_process(rec)
    rt.attach_device(Valve(id="valve"))
    with rt:
        valve = rt.device(Valve, "valve", timeout=30.0)
        pid1 = valve.call(Valve.pid)
        # The id the next incarnation used to take, claimed before the respawn; past the transport
        # with the credentials of a live worker of its own (a standalone one it joined).
        with joined_worker(rt, "insider") as insider, Impostor(rt.endpoint, b"valve#2", insider.credentials) as imp:
            _connected(rt, imp)
            errors: list[BaseException] = []

            def in_flight() -> None:
                try:
                    valve.call(Valve.nap, 30.0)
                except BaseException as exc:
                    errors.append(exc)

            caller = threading.Thread(target=in_flight)
            caller.start()
            wait_until(lambda: rt.stats().calls_in_flight == 1, what="a call in flight")
            os.kill(pid1, signal.SIGKILL)
            caller.join(30)
            assert len(errors) == 1 and isinstance(errors[0], DeviceCrashed), errors
            wait_until(lambda: rt.workers()[0].incarnation >= 2, what="the respawn to begin")

            # A call waiting for the device while the impostor speaks as it.
            answers: list[object] = []
            waiting = threading.Thread(
                target=lambda: answers.append(valve.options(wait=True).call(Valve.whoami)), name="waiter"
            )
            waiting.start()
            imp.answer_calls()
            before = rt.stats().rejected
            imp.send(p.Hello(os.getpid(), b"\0" * 32))
            imp.send(p.Ready())
            forged = p.encode_envelope(Forged("hijacked"), time.time(), "valve")
            imp.send(p.Batch(1, [msgspec.Raw(forged), msgspec.Raw(p.encode_state_set("valve/forged", True))]))
            for call_id in range(1, 65):
                imp.send(p.Reply(call_id, FORGED))
            sent = 3 + 64
            wait_until(lambda: rt.stats().rejected >= before + sent, what="every forged frame to be rejected")

            (started,) = rec.wait_for("worker.started", lambda e: e.payload.to_dict()["incarnation"] == 2, timeout=30)
            new_pid = started.payload.to_dict()["pid"]
            assert new_pid not in (pid1, os.getpid())
            waiting.join(30)
            assert answers == [f"real {new_pid}"]
            assert valve.call(Valve.whoami) == f"real {new_pid}"
            assert imp.calls_seen == 0
            rec.wait_for("worker.frame_rejected", lambda e: e.payload.to_dict()["worker"] == "")
        assert not rec.of("test.forged")
        assert rt.state.get("valve/forged") is None
        assert rt.workers()[0].pid is None or rt.workers()[0].pid == new_pid


def _run_dir(rt: Runtime) -> Path:
    assert rt.run_dir is not None
    return rt.run_dir


def _waiter() -> subprocess.Popen[bytes]:
    """A process that stands for a standalone worker (the runtime watches, and may kill, its pid)."""
    return subprocess.Popen(["sleep", "600"])


def test_the_right_identity_with_a_wrong_token_is_rejected_and_diagnosed() -> None:
    rec = Recorder()
    rt = Runtime(name="ident-token")
    rt.register_process(rec)
    rt.register_service(Echo())
    with rt:
        stand_in = _waiter()
        try:
            policy: p.Policy = {"start_timeout": 3.0, "restart": False}
            with Client(_run_dir(rt)) as client:
                joined = client.call(
                    p.JoinRequest(client.secret, "tests._helpers:Echo", "solo", stand_in.pid, None, policy), 30
                )
            assert isinstance(joined, p.Joined)
            assert joined.identity and len(joined.token) >= 16
            assert b"solo" not in joined.identity or len(joined.identity) > len(b"solo#1") + 8
            with Impostor(joined.endpoint, joined.identity, (joined.identity, joined.token)) as imp:
                before = rt.stats().rejected
                wrong = bytes(b ^ 0xFF for b in joined.token)
                imp.send(p.Hello(stand_in.pid, wrong))
                (rejected,) = rec.wait_for("worker.frame_rejected")
                assert rejected.payload.to_dict()["worker"] == "solo"
                assert "wrong token" in rejected.payload.to_dict()["error"]
                # Frames before a verified hello are ignored, whatever they say.
                imp.send(p.Batch(1, [msgspec.Raw(p.encode_envelope(Forged("early"), time.time(), "solo"))]))
                imp.send(p.Ready())
                with Impostor(joined.endpoint, b"solo#1") as guesser:  # the id it would once have had
                    # Never delivered: refused at the handshake. Whether the socket still queues it
                    # depends on how far that refusal got (its pipe may be gone already).
                    with contextlib.suppress(zmq.Again):
                        guesser.sock.send(p.encode(p.Hello(stand_in.pid, joined.token)), zmq.NOBLOCK)
                    wait_until(lambda: rt.stats().rejected >= before + 4, what="the four frames to be rejected")
                # It never said a verified hello: the start timeout says so, and what was seen meanwhile.
                (exited,) = rec.wait_for("worker.exited", lambda e: e.payload.to_dict()["worker"] == "solo", timeout=30)
                reason = exited.payload.to_dict()["reason"]
                assert "never said hello" in reason, reason
                assert "1 hello with a wrong token" in reason, reason
                assert "2 frames before a verified hello" in reason, reason
                assert "1 connection with wrong credentials" in reason, reason
            assert all(e.payload.to_dict()["worker"] != "solo" for e in rec.of("worker.started"))
            assert not rec.of("test.forged")
        finally:
            stand_in.kill()
            stand_in.wait()


def test_the_right_token_joins_after_strangers_were_turned_away() -> None:
    rec = Recorder()
    rt = Runtime(name="ident-join")
    rt.register_process(rec)
    rt.register_service(Echo())
    with rt:
        stand_in = _waiter()
        try:
            with Client(_run_dir(rt)) as client:
                joined = client.call(p.JoinRequest(client.secret, "tests._helpers:Echo", "solo", stand_in.pid), 30)
            assert isinstance(joined, p.Joined)
            with Impostor(joined.endpoint, joined.identity, (joined.identity, joined.token)) as worker:
                before = rt.stats().rejected
                worker.send(p.Ready())  # not yet: ignored
                worker.send(p.Hello(stand_in.pid, joined.token))
                worker.send(p.Ready())
                (started,) = rec.wait_for("worker.started", lambda e: e.payload.to_dict()["worker"] == "solo")
                assert started.payload.to_dict()["pid"] == stand_in.pid
                assert rt.stats().rejected == before + 1
                worker.send(p.Batch(1, [msgspec.Raw(p.encode_envelope(Forged("mine"), time.time(), "solo"))]))
                (said,) = rec.wait_for("test.forged")
                assert said.source == "solo"
                stand_in.kill()
                stand_in.wait()
                rec.wait_for("worker.exited", lambda e: e.payload.to_dict()["worker"] == "solo", timeout=30)
        finally:
            stand_in.kill()
            stand_in.wait()


@pytest.mark.timeout(120)
def test_a_flood_of_junk_from_strangers_neither_stops_workers_nor_floods_dispatch() -> None:
    rec = Recorder()
    rt = Runtime(name="ident-flood")
    rt.register_process(rec)
    rt.register_service(Echo())
    rt.attach_device(Valve(id="valve"))
    with rt:
        valve = rt.device(Valve, "valve", timeout=30.0)
        pid1 = valve.call(Valve.pid)
        before = rt.stats().rejected
        t0 = time.monotonic()
        # Past the transport (the credentials of a standalone worker it joined), under routing ids of no worker.
        insider = joined_worker(rt, "insider")
        inside = insider.__enter__().credentials
        impostors = [Impostor(rt.endpoint, ident, inside) for ident in (b"valve#2", b"echo#2", b"x" * 200, b"junk")]
        total = 0
        try:
            stop = threading.Event()
            counts = [0] * len(impostors)

            def flood(i: int, imp: Impostor) -> None:
                junk = [b"\x00", b"\xc1" * 100, p.encode(p.Hello(1, b"")), p.encode(p.Ready())]
                while not stop.is_set() and counts[i] < 5_000:
                    imp.send_raw(junk[counts[i] % len(junk)])
                    counts[i] += 1

            floods = [threading.Thread(target=flood, args=(i, imp)) for i, imp in enumerate(impostors)]
            for t in floods:
                t.start()
            try:
                # Meanwhile the workers are served, and one that dies comes back.
                for n in range(20):
                    rt.emit(Ping(n=n))
                rec.wait_for("test.pong", count=20, timeout=60)
                os.kill(pid1, signal.SIGKILL)
                (started,) = rec.wait_for(
                    "worker.started", lambda e: e.payload.to_dict()["incarnation"] == 2, timeout=60
                )
                assert valve.call(Valve.pid) == started.payload.to_dict()["pid"] != pid1
            finally:
                for t in floods:
                    t.join()
            total = sum(counts)
            wait_until(lambda: rt.stats().rejected >= before + total, timeout=60, what="every junk frame to be counted")
            # The last summary follows within a report period.
            wait_until(
                lambda: sum(e.payload.to_dict()["count"] for e in rec.of("worker.frame_rejected")) >= total,
                timeout=30,
                what="every rejected frame to be accounted for in a report",
            )
            elapsed = time.monotonic() - t0
        finally:
            for imp in impostors:
                imp.__exit__(None, None, None)
            insider.__exit__(None, None, None)
        reports = rec.of("worker.frame_rejected")
        assert sum(e.payload.to_dict()["count"] for e in reports) == total
        # At most one report a second (and a first at once), however many frames came.
        assert len(reports) <= 2 + elapsed, (len(reports), elapsed, total)
        assert total >= 1_000 and all(isinstance(e.payload, message.FrameRejected) for e in reports)


def test_a_worker_run_in_a_fresh_interpreter_gets_its_secret_outside_argv_and_environment() -> None:
    rec = Recorder()
    rt = Runtime(name="ident-exec")
    rt.register_process(rec)
    with rt:
        with Client(_run_dir(rt)) as client:
            done = client.call(p.SpawnRequest(client.secret, "tests.cli_parts:Beeper", "beeper", {"every": 3600}), 60)
        assert isinstance(done, p.Done), done
        (started,) = rec.wait_for("worker.started", lambda e: e.payload.to_dict()["worker"] == "beeper", timeout=60)
        pid = started.payload.to_dict()["pid"]
        assert rt.worker("beeper").pid == pid and rt.worker("beeper").state is WorkerState.RUNNING
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        assert b"worker" in argv  # a fresh interpreter, not a fork
        # Its routing id is 32 hex digits and its token 32 random bytes: neither can hide in a
        # short or decimal word, and its environment is this one's but for where to import
        # from and which inherited descriptor to read its key from (a small number).
        assert all(len(word) < 32 or b"/" in word for word in argv), argv
        assert set(environ) - set(os.environb) <= {b"PYTHONPATH", p.KEY_FD_ENV.encode()}
        assert environ[p.KEY_FD_ENV.encode()].isdigit()
        assert all(environ[k] == v for k, v in os.environb.items() if k in environ and k != b"PYTHONPATH")

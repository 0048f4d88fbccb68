"""A ThreadedRuntime embedded in host applications: a plain thread loop, and asyncio."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

from bussdcc import Context, Event, Message, Process, ThreadedRuntime

from ._cli import ROOT, env
from ._helpers import Echo, Ping, Pong


def test_the_embedding_example_runs_both_hosts() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embedding.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "thread host got [0, 1, 2, 3, 4]",
        f"asyncio host got {list(range(20))}",
    ]
    assert proc.stderr == ""


class _Futures(Process):
    name = "futures"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[int, asyncio.Future[Pong]] = {}
        self.threads: set[int] = set()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        if isinstance(evt.payload, Pong):
            self.threads.add(threading.get_ident())
            fut = self.waiting[evt.payload.n]
            self.loop.call_soon_threadsafe(fut.set_result, evt.payload)


def test_coroutines_emit_and_await_answers_from_a_worker_process() -> None:
    async def main() -> tuple[list[int], set[int], set[int]]:
        loop = asyncio.get_running_loop()
        bridge = _Futures(loop)
        rt = ThreadedRuntime(name="aio")
        rt.register_process(bridge)
        rt.register_service(Echo())
        await asyncio.to_thread(rt.start, 30)
        try:

            async def ask(n: int) -> Pong:
                bridge.waiting[n] = loop.create_future()
                rt.emit(Ping(n=n))  # from the coroutine, on the loop's thread
                return await asyncio.wait_for(bridge.waiting[n], 20)

            pongs = await asyncio.gather(*(ask(n) for n in range(50)))
        finally:
            await asyncio.to_thread(rt.stop, None, 30)
        return [p.n for p in pongs], {p.pid for p in pongs}, bridge.threads

    numbers, pids, threads = asyncio.run(main())
    assert numbers == list(range(50))
    assert len(pids) == 1 and os.getpid() not in pids  # answered in the Service's own process
    assert threading.get_ident() not in threads  # answers are dispatched on the runtime's threads


def test_a_plain_thread_loop_host_drives_the_runtime() -> None:
    got: list[int] = []
    answered = threading.Event()

    class Collect(Process):
        name = "collect"

        def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
            if isinstance(evt.payload, Pong):
                got.append(evt.payload.n)
                answered.set()

    rt = ThreadedRuntime(name="loop-host")
    rt.register_process(Collect())
    rt.register_service(Echo())
    rt.start(timeout=30)
    errors: list[BaseException] = []

    def host_loop() -> None:  # the host's own thread, not the test's
        try:
            for n in range(10):
                answered.clear()
                rt.emit(Ping(n=n))
                assert answered.wait(20), f"no answer to {n}"
        except BaseException as exc:
            errors.append(exc)

    host = threading.Thread(target=host_loop)
    host.start()
    host.join(60)
    rt.stop(timeout=30)
    assert not errors, errors
    assert got == list(range(10))
    assert not rt.booted

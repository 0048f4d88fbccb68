"""Embedding: a ThreadedRuntime inside a host that has its own main loop.

``python examples/embedding.py`` runs both hosts: a plain thread loop, and an
asyncio application whose coroutines emit messages and await the answers
that a Service (in its own process) sends back.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import time
from dataclasses import dataclass

from bussdcc import Context, Event, Message, Process, Service, ThreadedRuntime


@dataclass(slots=True, frozen=True)
class Order(Message):
    """A request from the host."""

    name = "embed.order"
    n: int


@dataclass(slots=True, frozen=True)
class Done(Message):
    """The Service's answer, with the pid of its process."""

    name = "embed.done"
    n: int
    pid: int


class Worker(Service):
    """Answers every order, in its own process."""

    name = "worker"
    interval = 3600.0

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        """Answer an Order with a Done."""
        if isinstance(evt.payload, Order):
            ctx.emit(Done(n=evt.payload.n, pid=os.getpid()))


class ToQueue(Process):
    """Hands every Done to the host's thread (dispatch must never wait on the host)."""

    name = "to-host"

    def __init__(self) -> None:
        self.done: queue.Queue[Done] = queue.Queue()

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        """Queue the answers."""
        if isinstance(evt.payload, Done):
            self.done.put(evt.payload)


def thread_host(rounds: int = 5) -> list[int]:
    """A host with a plain loop: each round emits an order and waits for its answer."""
    bridge = ToQueue()
    rt = ThreadedRuntime(name="embed-thread")
    rt.register_process(bridge)
    rt.register_service(Worker())
    rt.start()  # boots in a background thread; returns once every worker is ready
    answered: list[int] = []
    try:
        for n in range(rounds):  # the host's own loop
            rt.emit(Order(n=n))
            answered.append(bridge.done.get(timeout=10).n)
            time.sleep(0.01)  # the host's other work
    finally:
        rt.stop()
    return answered


class ToLoop(Process):
    """Resolves the future awaiting each answer, on the asyncio loop's thread."""

    name = "to-loop"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[int, asyncio.Future[Done]] = {}

    def handle_event(self, ctx: Context, evt: Event[Message]) -> None:
        """Hand a Done to the coroutine waiting for it."""
        if isinstance(evt.payload, Done):
            fut = self.waiting.get(evt.payload.n)
            if fut is not None:
                self.loop.call_soon_threadsafe(fut.set_result, evt.payload)


async def asyncio_host(clients: int = 4, each: int = 5) -> list[int]:
    """An asyncio app: concurrent coroutines emit orders and await the answers."""
    loop = asyncio.get_running_loop()
    bridge = ToLoop(loop)
    rt = ThreadedRuntime(name="embed-asyncio")
    rt.register_process(bridge)
    rt.register_service(Worker())
    await asyncio.to_thread(rt.start)  # boot waits for workers: not on the loop
    numbers = itertools.count()

    async def client() -> list[int]:
        got = []
        for _ in range(each):
            n = next(numbers)
            bridge.waiting[n] = loop.create_future()
            rt.emit(Order(n=n))  # cheap; it waits only if the workers fall far behind
            done = await asyncio.wait_for(bridge.waiting[n], timeout=10)
            got.append(done.n)
        return got

    try:
        results = await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        await asyncio.to_thread(rt.stop)
    return sorted(n for r in results for n in r)


if __name__ == "__main__":
    print("thread host got", thread_host())
    print("asyncio host got", asyncio.run(asyncio_host()))

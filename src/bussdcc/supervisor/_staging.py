"""Boot and shutdown stages: the workers of one stage started or stopped at once, announced in order.

Runs on the thread that boots or shuts down. A stage is the devices, or the services: every
worker of it whose dependencies are met (``after``/``requires``, the member before it in its
group) is started at once, and each other as soon as the last of those it follows is ready or
failed; at shutdown, each stops once every worker that follows it has stopped. Meanwhile the
supervisor holds what it says about each of them (``device.attached``, ``service.started``,
``worker.exited``, ...) and says it in the stage's order: the order the seed's one-at-a-time
boot gave, without waiting for each worker in turn.
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Callable, Mapping

from ..errors import BootError
from ._assembly import Assembly
from ._supervisor import Supervisor
from ._workers import Incarnation

#: Seconds on top of a worker's own timeouts before boot or shutdown stops waiting for it.
GRACE = 5.0
#: How often a waiting boot looks whether it was asked to stop (seconds).
_LOOK = 0.1


def _start_all(sup: Supervisor, names: list[str], resolved: queue.SimpleQueue[str]) -> dict[str, Incarnation]:
    """Start every one of ``names``; each puts its name in ``resolved`` once ready or ended (hub thread)."""
    out: dict[str, Incarnation] = {}
    for name in names:
        inc = sup.start(name)
        inc.outcome.listener = functools.partial(resolved.put, name)
        if inc.outcome.is_set():
            resolved.put(name)
        out[name] = inc
    return out


def _stop_all(sup: Supervisor, names: list[str], resolved: queue.SimpleQueue[str]) -> list[float]:
    """Stop every one of ``names``; each puts its name in ``resolved`` once stopped (hub thread)."""
    limits = []
    for name in names:
        worker = sup.workers[name]
        worker.done.listener = functools.partial(resolved.put, name)
        sup.stop(name)
        if worker.done.is_set():
            resolved.put(name)
        comp = worker.component
        limits.append(comp.stop_timeout + comp.kill_timeout + GRACE)
    return limits


def _release(parts: Assembly, names: list[str]) -> int:
    sup = parts.supervisor
    return parts.hub.call(lambda: sup.release_announcements(names))


def _release_rest(parts: Assembly, names: list[str]) -> None:
    """Say whatever is still held about ``names`` (a stage that ended early); never raises."""
    try:
        _release(parts, names)
    except Exception:
        pass  # the hub is gone: nothing is said any more


def start_stage(
    parts: Assembly,
    order: list[str],
    before: Mapping[str, set[str]],
    *,
    may_start: Callable[[str], bool],
    interrupted: Callable[[], str | None],
    notify: Callable[[], None],
) -> None:
    """Start the workers ``order`` (in start order) as early as their dependencies allow; return once
    each is ready or failed and what was said about it is dispatched, in ``order``.
    """
    sup, hub = parts.supervisor, parts.hub
    stage = set(order)
    deps = {name: before.get(name, set()) & stage for name in order}
    resolved: set[str] = set()
    outcomes: queue.SimpleQueue[str] = queue.SimpleQueue()
    deadlines: dict[str, float] = {}
    waiting = list(order)
    released = 0
    ticket = 0
    hub.call(lambda: sup.hold_announcements(order))
    try:
        while released < len(order):
            free = [name for name in waiting if deps[name] <= resolved]
            if free:
                waiting = [name for name in waiting if name not in free]
                go = [name for name in free if may_start(name)]
                resolved.update(name for name in free if name not in go)  # it stays stopped
                if go:
                    hub.call(lambda go=go: _start_all(sup, go, outcomes))  # type: ignore[misc]
                    notify()
                    now = time.monotonic()
                    for name in go:
                        deadlines[name] = now + sup.workers[name].component.start_timeout + GRACE
                if len(go) < len(free):
                    continue  # those that stay stopped may free others at once
            prefix = []
            while released < len(order) and order[released] in resolved:
                prefix.append(order[released])
                released += 1
            if prefix:
                ticket = _release(parts, prefix)
            why = interrupted()
            if why is not None:
                raise BootError(f"boot interrupted: {why}")
            if released == len(order):
                break
            try:
                resolved.add(outcomes.get(timeout=_LOOK))
                while True:
                    resolved.add(outcomes.get_nowait())
            except queue.Empty:
                pass
            now = time.monotonic()
            for name, deadline in deadlines.items():
                if name not in resolved and now > deadline:
                    raise BootError(f"worker {name!r} neither became ready nor failed in time")
    finally:
        if released < len(order):
            _release_rest(parts, order)
    # What was said about the stage is dispatched before boot goes on; what the workers
    # send afterwards need not be (a handler may well wait for boot to return).
    parts.dispatcher.wait_for(ticket, None)


def stop_stage(
    parts: Assembly, order: list[str], before: Mapping[str, set[str]], *, notify: Callable[[], None]
) -> None:
    """Stop the workers ``order`` (in start order): each once every one that follows it has stopped; return once
    all have stopped (or outlived their stop and kill timeouts) and what was said is dispatched, in reverse order.
    """
    sup, hub = parts.supervisor, parts.hub
    stage = set(order)
    followers: dict[str, set[str]] = {name: set() for name in order}
    for name in order:
        for dep in before.get(name, set()) & stage:
            followers[dep].add(name)
    last_first = list(reversed(order))
    stopped: set[str] = set()
    issued: set[str] = set()
    done: queue.SimpleQueue[str] = queue.SimpleQueue()
    deadlines: dict[str, float] = {}
    released = 0
    hub.call(lambda: sup.hold_announcements(last_first))
    try:
        while released < len(last_first):
            go = [name for name in last_first if name not in issued and followers[name] <= stopped]
            if go:
                issued.update(go)
                limits = hub.call(lambda go=go: _stop_all(sup, go, done))  # type: ignore[misc]
                notify()
                now = time.monotonic()
                for name, limit in zip(go, limits, strict=True):
                    deadlines[name] = now + limit
            prefix = []
            while released < len(last_first) and last_first[released] in stopped:
                prefix.append(last_first[released])
                released += 1
            if prefix:
                _release(parts, prefix)
            if released == len(last_first):
                break
            try:
                stopped.add(done.get(timeout=_LOOK))
                while True:
                    stopped.add(done.get_nowait())
            except queue.Empty:
                pass
            now = time.monotonic()
            # One that outlived its stop and kill timeouts is waited for no longer (as one at a time did).
            stopped.update(name for name, deadline in deadlines.items() if now > deadline)
    finally:
        if released < len(last_first):
            _release_rest(parts, last_first)
        for name in order:
            worker = sup.workers.get(name)
            if worker is not None:
                worker.done.listener = None
    parts.dispatcher.barrier(None)

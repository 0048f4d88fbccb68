"""Dependencies between workers: ``after`` and ``requires`` (pure functions; any thread).

The start order is a topological order of the dependencies that keeps the seed's
role order (every device before any service) and, among what may start, the
order of registration. Shutdown stops in the reverse order. A name in
``after``/``requires`` may be a pool's: it stands for every member of the pool.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence

from ..errors import RegistrationError
from ..kernel import Device, Service
from ._procenv import names

#: Where a pool member keeps its pool's name (set by ``Runtime.add_pool``).
POOL_ATTR = "_bussdcc_pool"


class DependencyError(RegistrationError):
    """An unknown name, a cycle, or a device that would start after a service.

    ``worker`` and ``key`` say which worker's which setting is at fault.
    """

    def __init__(self, message: str, worker: str, key: str) -> None:
        super().__init__(message)
        self.worker = worker
        self.key = key


def pool_of(component: object) -> str | None:
    """The pool ``component`` belongs to, if any."""
    pool = vars(component).get(POOL_ATTR) if hasattr(component, "__dict__") else None
    return pool if isinstance(pool, str) else None


def _expand(
    workers: Mapping[str, Service | Device], pools: Mapping[str, Sequence[str]], comp: Service | Device, key: str
) -> list[str]:
    out: list[str] = []
    for dep in names(comp, key):
        if dep in workers:
            out.append(dep)
        elif dep in pools:
            out.extend(m for m in pools[dep] if m in workers)
        else:
            raise DependencyError(
                f"{comp.name!r}: {key} names {dep!r}, which is no registered worker or pool", comp.name, key
            )
    return out


def start_order(
    workers: Mapping[str, Service | Device],
    pools: Mapping[str, Sequence[str]] = {},
    groups: Sequence[Sequence[str]] = (),
) -> list[str]:
    """The names of ``workers`` (registration order) in the order they start; :class:`DependencyError` if none.

    A group's members start in the group's order (each after the one before it).
    """
    index = {name: i for i, name in enumerate(workers)}
    rank = {name: (0 if isinstance(c, Device) else 1, index[name]) for name, c in workers.items()}
    before: dict[str, set[str]] = {name: set() for name in workers}
    key_of: dict[tuple[str, str], str] = {}
    for name, comp in workers.items():
        for key in ("after", "requires"):
            for dep in _expand(workers, pools, comp, key):
                if dep == name:
                    continue  # a pool member after its own pool: no constraint on itself
                if isinstance(comp, Device) and isinstance(workers[dep], Service):
                    raise DependencyError(
                        f"{name!r}: {key} names the service {dep!r}, but devices start before services", name, key
                    )
                before[name].add(dep)
                key_of[name, dep] = key
    for members in groups:
        for dep, name in itertools.pairwise(members):
            if dep in workers and name in workers:
                before[name].add(dep)
                key_of.setdefault((name, dep), "group")
    waiting = {name: len(deps) for name, deps in before.items()}
    followers: dict[str, list[str]] = {name: [] for name in workers}
    for name, deps in before.items():
        for dep in deps:
            followers[dep].append(name)
    ready = [(rank[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for follower in followers[name]:
            waiting[follower] -= 1
            if waiting[follower] == 0:
                heapq.heappush(ready, (rank[follower], follower))
    if len(order) < len(workers):
        cycle = _a_cycle({n: before[n] for n in workers if waiting[n] > 0})
        first = cycle[0]
        raise DependencyError(
            f"{first!r}: dependency cycle {' -> '.join([*cycle, first])}", first, key_of[first, cycle[1 % len(cycle)]]
        )
    return order


def _a_cycle(before: dict[str, set[str]]) -> list[str]:
    """One cycle among workers none of which could start (each waits for another of them)."""
    start = min(before)
    path: list[str] = []
    seen: dict[str, int] = {}
    name = start
    while name not in seen:
        seen[name] = len(path)
        path.append(name)
        name = min(d for d in before[name] if d in before)
    return path[seen[name] :]


def dependents(workers: Mapping[str, Service | Device], name: str) -> list[str]:
    """Who ``requires`` ``name`` (or its pool), directly or through another, in the order of ``workers``."""
    bound = {name}
    changed = True
    while changed:
        changed = False
        for other, comp in workers.items():
            if other in bound:
                continue
            needs = set(names(comp, "requires"))
            if any(b in needs or pool_of(workers[b]) in needs for b in bound if b in workers):
                bound.add(other)
                changed = True
    return [n for n in workers if n in bound and n != name]

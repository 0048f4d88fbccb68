"""Pools of identical workers (OTP's ``simple_one_for_one``), and the start order of dependencies.

Runs on the caller's thread, as the rest of the worker-management API. A pool
``NAME`` of N workers is ``NAME-0 .. NAME-(N-1)``, each made by the pool's
``make(name)`` and supervised on its own (its own pid, policy and restarts);
:meth:`PoolManagement.scale` adds the next ones or removes the highest-numbered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import RegistrationError, RuntimeStateError
from ..kernel import Device, Service
from ..kernel._boundary import WORKER_SLOTS
from ._assembly import Assembly
from ._deps import POOL_ATTR, DependencyError, dependents, pool_of, start_order
from ._management import WorkerManagement
from ._procenv import drops, names, open_run_dir
from ._supervisor import SpawnRefused, Supervisor
from ._workers import Incarnation, WorkerState, WorkerStatus

Maker = Callable[[str], Service | Device]
_UP = (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.BACKOFF)


class Pool:
    """A pool's template (``make``) and how many members it has now."""

    def __init__(self, name: str, make: Maker) -> None:
        self.name = name
        self.make = make
        self.size = 0
        self.lock = threading.Lock()

    def member(self, k: int) -> str:
        """The name of member ``k``."""
        return f"{self.name}-{k}"

    def members(self) -> list[str]:
        """Every member's name, in order."""
        return [self.member(k) for k in range(self.size)]


class PoolManagement(WorkerManagement):
    """Pools, ``scale``, and dependencies at boot: methods of :class:`Runtime` (a base class of it)."""

    _pools: dict[str, Pool]

    def add_pool(self, name: str, make: Maker, instances: int) -> None:
        """Register a pool of ``instances`` workers ``NAME-0 ..``, each ``make("NAME-k")``.

        Before boot they start at boot; after, now (each must then be picklable). A name
        in another worker's ``after``/``requires`` may be the pool's: it means every member.
        """
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"a pool needs a non-empty string name, not {name!r}")
        if not callable(make):
            raise RegistrationError(f"pool {name!r}: make must be callable, not {type(make).__name__}")
        if name in self._pools or name in self._registry.workers():
            raise RegistrationError(f"a pool or worker named {name!r} is registered already")
        _count(name, instances)
        self._pools[name] = Pool(name, make)
        self.scale(name, instances)

    def scale(self, name: str, instances: int) -> list[WorkerStatus]:
        """Make the pool ``name`` ``instances`` strong: start the next members or stop and remove the last ones.

        Returns the status of every member once each added one runs (or failed to) and each
        removed one is gone; before boot, registers or forgets members and returns ``[]``.
        """
        self._outside_handlers("scale")
        pool = self._pools.get(name)
        if pool is None:
            known = ", ".join(sorted(self._pools)) or "none"
            raise RegistrationError(f"no pool named {name!r} (pools: {known})")
        _count(name, instances)
        with pool.lock:
            while pool.size < instances:
                member = pool.member(pool.size)
                component = pool.make(member)
                if not isinstance(component, Service | Device) or component.name != member:
                    raise RegistrationError(f"pool {name!r}: make({member!r}) must return a Service or Device named so")
                vars(component)[POOL_ATTR] = name
                self._add(component, None)
                pool.size += 1
            while pool.size > instances:
                member = pool.member(pool.size - 1)
                if self._parts is None:
                    self._registry.drop(self._registry.find(member))
                else:
                    WorkerManagement.remove_worker(self, member)
                pool.size -= 1
        if self._parts is None:
            return []
        return [self.worker(m) for m in pool.members()]

    def pools(self) -> dict[str, int]:
        """Every pool's name and size."""
        return {name: pool.size for name, pool in self._pools.items()}

    def _pool_names(self) -> set[str]:
        return set(self._pools)

    def _drop_pool(self, name: str) -> None:
        self._pools.pop(name, None)

    def remove_worker(self, name: str) -> None:
        """Stop ``name`` if it runs, and forget it (not a member of a group, nor of a pool: ``scale`` it)."""
        pool = pool_of(self.component(name)) if self._parts is not None else None
        if pool is not None and pool in self._pools:
            raise RuntimeStateError(f"{name} is a member of the pool {pool!r}: scale the pool instead")
        super().remove_worker(name)

    def _add(self, component: Service | Device, argv: list[str] | None) -> None:
        parts = self._parts
        if parts is not None and isinstance(component, Service | Device):
            self._check_known(component)
            self._open_for(parts, [component])
        super()._add(component, argv)

    # ---- dependencies -----------------------------------------------------------------

    def _order_workers(self) -> None:
        """Put the registered workers in start order (boot; raises :class:`DependencyError`)."""
        reg = self._registry
        pools = {n: p.members() for n, p in self._pools.items()}
        order = start_order(reg.workers(), pools, [members for _, members in reg.groups.values()])
        devices, services = dict(reg.devices), dict(reg.services)
        reg.devices.clear()
        reg.services.clear()
        for worker in order:
            if worker in devices:
                reg.devices[worker] = devices[worker]
            else:
                reg.services[worker] = services[worker]

    def _check_known(self, component: Service | Device) -> None:
        """Refuse a worker added after boot whose dependencies name nobody."""
        known = self._registry.workers()
        for key in ("after", "requires"):
            for dep in names(component, key):
                if dep not in known and dep not in self._pools:
                    raise DependencyError(
                        f"{component.name!r}: {key} names {dep!r}, which is no registered worker or pool",
                        component.name,
                        key,
                    )

    def _open_for(self, parts: Assembly, components: list[Service | Device]) -> None:
        """Let workers that run as another user reach the workers' socket."""
        if any(drops(c) for c in components):
            try:
                open_run_dir(parts.run_dir)
            except OSError as exc:
                raise RegistrationError(f"cannot let workers of another user reach {parts.run_dir}: {exc}") from exc
            hub, run_dir = parts.hub, parts.run_dir

            def reopen() -> None:  # the endpoint bound again (its directory remade): open it again
                try:
                    open_run_dir(run_dir)
                except OSError as exc:
                    hub.fault("run_dir", "not_open", f"workers of another user cannot reach {run_dir}: {exc}")

            hub.after_bind = reopen

    def _boot_start(self, parts: Assembly, name: str, ahead: Ahead | None = None) -> None:
        """Start ``name`` at boot, unless a worker it requires is not up (it stays stopped).

        With ``ahead``: the workers after it are forked, gated, up to :data:`AHEAD` in advance.
        """
        sup = parts.supervisor
        workers = sup.workers
        if ahead is not None and ahead.gated(name):
            # Its turn: Go (the workers before it are ready and announced), and fork the next.
            def turn() -> Incarnation | None:
                inc = sup.release(name)
                ahead.fork(sup, name)
                return inc

            inc = parts.hub.call(turn)
            self._notify()
            self._wait_started(workers[name], inc, gated=True)
            return
        if ahead is not None:
            parts.hub.call(lambda: ahead.fork(sup, name))
        component = workers[name].component
        pools = {n: p.members() for n, p in self._pools.items()}
        for dep in names(component, "requires"):
            for one in pools.get(dep, [dep]):
                if one in workers and workers[one].state not in _UP:
                    return
        self._start_worker(parts, name)

    def _dependents(self, name: str) -> list[str]:
        """Who requires ``name``, directly or not, in start order."""
        parts = self._up()
        return dependents({n: w.component for n, w in tuple(parts.supervisor.workers.items())}, name)

    def _stop_with_dependents(self, name: str) -> list[str]:
        """Stop those that require ``name`` (last first); the names of those that were up."""
        parts = self._up()
        workers = parts.supervisor.workers
        up = [d for d in self._dependents(name) if workers[d].state in _UP]
        for dep in reversed(up):
            self._stop_one(dep)
        return up

    def stop_worker(self, name: str) -> WorkerStatus:
        """Stop ``name`` (and first those that ``require`` it) for good; return once it has stopped."""
        self._outside_handlers("stop_worker")
        with self._lc.hold(live=True):
            self._live_worker(name)
            self._stop_with_dependents(name)
            return self._stop_one(name)

    def restart_worker(self, name: str) -> WorkerStatus:
        """Stop ``name`` (and those that ``require`` it) if it runs, then start it (and them) again."""
        self._outside_handlers("restart_worker")
        with self._lc.hold(live=True):
            if self._live_worker(name).argv == []:
                raise RuntimeStateError(f"{name} is a standalone worker: restart it where it was started")
            bound = self._stop_with_dependents(name)
            self._stop_one(name)
            status = self._start(name)
            for dep in bound:
                self._start(dep)
            return status


#: Workers boot forks ahead of their turn: enough to keep the fork server busy while one starts,
#: few enough that those waiting do not crowd the machine.
AHEAD = 24


class Ahead:
    """Boot's workers forked ahead of their turn, gated: each sets up in parallel, then waits for its Go.

    Only a worker without ``requires`` is: whether one with them starts at all is known only at
    its turn. Its methods run on the hub thread.
    """

    def __init__(self, order: list[str], workers: dict[str, Service | Device]) -> None:
        self.order = order
        self.eligible = {n for n in order if not names(workers[n], "requires")}
        self.position = {n: k for k, n in enumerate(order)}
        self.next = 0
        self.forked: set[str] = set()

    def gated(self, name: str) -> bool:
        """Whether ``name`` was forked ahead, gated (hub thread or after a hub call)."""
        return name in self.forked

    def fork(self, sup: Supervisor, current: str | None = None) -> None:
        """Fork the eligible workers up to :data:`AHEAD` past ``current`` (None: from the first) not forked yet."""
        first = 0 if current is None else self.position[current] + 1
        end = min(len(self.order), first + AHEAD)
        self.next = max(self.next, first)
        while self.next < end:
            name = self.order[self.next]
            if name in self.eligible:
                try:
                    sup.start(name, gated=True)
                except SpawnRefused:
                    return  # its turn tries again, as boot always has (and fails as it always has)
                self.forked.add(name)
            self.next += 1


def instances_error(instances: object) -> str | None:
    """Why ``instances`` is no pool size (None if it is one)."""
    if not isinstance(instances, int) or isinstance(instances, bool) or instances < 0:
        return f"must be an int >= 0, not {instances!r}"
    if instances > WORKER_SLOTS:
        # More could never run at once: refused before any member is made, not forked until the slots run out.
        return f"must be at most {WORKER_SLOTS} (the workers a runtime runs at once), not {instances!r}"
    return None


def _count(name: str, instances: object) -> None:
    if (why := instances_error(instances)) is not None:
        raise RegistrationError(f"pool {name!r}: instances {why}")

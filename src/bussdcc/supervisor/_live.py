"""Changing a live runtime's Processes and Interfaces, and reloading it from its system file.

Runs on the caller's thread (never a handler's: starting and stopping a receiver
dispatches what it says), and for a SIGHUP on a ``bussdcc-reload`` thread of its own.
Adding and removing hold the runtime (``_lifecycle``) like worker management does;
reloads are serialised by a lock of their own, and apply through the public API.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..errors import BussdccError, ControlError, RegistrationError, RuntimeStateError
from ..kernel import Context, Device, Interface, Message, Process, Service, Strategy
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._assembly import Assembly
from ._dispatch import Dispatch, Receiver
from ._lifecycle import Lifecycle, Phase
from ._registry import Registry
from ._specs import check_group

#: Re-reads a system file and applies it (``True``: only plan); raises :class:`BussdccError` to refuse.
Reloader = Callable[[bool], p.Reloaded]


class LiveChanges:
    """The receiver-management and reload methods of :class:`Runtime` (a base class of it)."""

    _parts: Assembly | None
    _lc: Lifecycle
    _registry: Registry
    _dispatch: Dispatch
    _reloader: Reloader | None = None
    _reload_lock: threading.Lock

    def _context(self, source: str) -> Context:
        raise NotImplementedError

    def emit(self, message: Message) -> None:
        raise NotImplementedError

    # Worker management's (earlier in the runtime's MRO: these are never called).
    def add_worker(self, component: Service | Device) -> None:
        raise NotImplementedError

    def remove_worker(self, name: str) -> None:
        raise NotImplementedError

    def scale(self, name: str, instances: int) -> object:
        raise NotImplementedError

    def _pool_names(self) -> set[str]:
        raise NotImplementedError

    def _drop_pool(self, name: str) -> None:
        raise NotImplementedError

    def _order_workers(self) -> None:
        raise NotImplementedError

    # ---- Processes and Interfaces --------------------------------------------------------

    def add_process(self, component: Process) -> None:
        """Register a Process or Interface: it starts now if the runtime is up, else at boot."""
        if not isinstance(component, Process):
            raise RegistrationError(f"add_process() takes a Process or an Interface, not {type(component).__name__}")
        self._outside("add_process")
        what = "interface" if isinstance(component, Interface) else "process"
        with self._lc.hold(live=False):
            phase = self._lc.phase
            if phase is not Phase.DOWN and phase is not Phase.UP:
                raise RuntimeStateError(f"cannot add a {what} while the runtime is {phase.value}")
            self._registry.put_receiver(component, what)
            if phase is Phase.DOWN:
                return  # it starts with the others at boot
            rec = Receiver(component.name, component, self._context(component.name))
            # In the dispatch before it starts, as at boot: it sees its own `started` message.
            self._dispatch.receivers = (*self._dispatch.receivers, rec)
            self._dispatch.start_receiver(rec)

    def remove_process(self, name: str) -> None:
        """Stop the Process or Interface ``name`` if the runtime is up, and forget it."""
        self._outside("remove_process")
        with self._lc.hold(live=False):
            reg = self._registry
            if name not in reg.processes and name not in reg.interfaces:
                known = ", ".join(sorted([*reg.processes, *reg.interfaces])) or "none"
                raise RegistrationError(f"no process or interface named {name!r} (registered: {known})")
            phase = self._lc.phase
            if phase is not Phase.DOWN and phase is not Phase.UP:
                raise RuntimeStateError(f"cannot remove {name!r} while the runtime is {phase.value}")
            for rec in self._dispatch.receivers:
                if rec.name == name:
                    self._dispatch.stop_receiver(rec)  # still dispatched to: it sees its own `stopped`
                    self._dispatch.receivers = tuple(r for r in self._dispatch.receivers if r is not rec)
            reg.processes.pop(name, None)
            reg.interfaces.pop(name, None)

    def processes(self) -> list[str]:
        """The names of the registered Processes, then Interfaces, in the order they start."""
        return [name for name, _ in self._registry.receivers()]

    # ---- groups and pools, live ----------------------------------------------------------

    def groups(self) -> dict[str, tuple[Strategy, list[str]]]:
        """Every group's strategy and members (in start order), by name."""
        return {name: (strategy, list(members)) for name, (strategy, members) in self._registry.groups.items()}

    def add_group(self, name: str, members: Sequence[Service | Device], *, strategy: Strategy = "one_for_one") -> None:
        """Add a group to a runtime that is up: its members start in order (each up before the next), then are tied.

        Before boot, use :meth:`register_group`. Refused as a whole (nothing added) for a bad group
        or a taken name; a member that cannot start leaves those before it running, ungrouped.
        """
        self._outside("add_group")
        if self._parts is None:
            raise RuntimeStateError("add_group() is for a runtime that is up: use register_group() before boot")
        self._registry.check_group(name, members, strategy)
        for member in members:
            self.add_worker(member)
        parts = self._parts
        names = [member.name for member in members]
        if parts is not None:
            sup = parts.supervisor
            parts.hub.call(lambda: sup.add_group(name, strategy, names))
        self._registry.groups[name] = (strategy, names)

    def remove_group(self, name: str) -> None:
        """Untie the group ``name``, then stop and forget its members, last first (a runtime that is up)."""
        self._outside("remove_group")
        found = self._registry.groups.get(name)
        if found is None:
            known = ", ".join(sorted(self._registry.groups)) or "none"
            raise RegistrationError(f"no group named {name!r} (groups: {known})")
        parts = self._parts
        if parts is None:
            raise RuntimeStateError("remove_group() is for a runtime that is up")
        sup = parts.supervisor

        def untie() -> None:
            group = sup.groups.pop(name, None)
            if group is not None and group.plan is not None:
                group.plan.cancel()  # a group restart under way ends here: each member is stopped next
            for member in found[1]:
                worker = sup.workers.get(member)
                if worker is not None and worker.group == name:
                    worker.group = None

        parts.hub.call(untie)
        del self._registry.groups[name]
        for member in reversed(found[1]):
            self.remove_worker(member)

    def set_group_strategy(self, name: str, strategy: Strategy) -> None:
        """Change a group's restart strategy in place (no member restarts); it decides the next restart."""
        found = self._registry.groups.get(name)
        if found is None:
            raise RegistrationError(f"no group named {name!r}")
        members = [self._registry.find(member) for member in found[1]]
        check_group(name, members, strategy)
        parts = self._parts
        if parts is not None:
            sup = parts.supervisor

            def put() -> None:
                sup.groups[name].strategy = strategy

            parts.hub.call(put)
        self._registry.groups[name] = (strategy, found[1])

    def remove_pool(self, name: str) -> None:
        """Scale the pool ``name`` to none (its members stop, last first) and forget it."""
        if name not in self._pool_names():
            raise RegistrationError(f"no pool named {name!r}")
        self.scale(name, 0)
        self._drop_pool(name)

    # ---- reload --------------------------------------------------------------------------

    def set_reloader(self, reloader: Reloader | None) -> None:
        """Make :meth:`reload` (and SIGHUP, for a SignalRuntime) re-read a system file with ``reloader``."""
        self._reloader = reloader

    @property
    def reloadable(self) -> bool:
        """Whether this runtime knows a system file to reload."""
        return self._reloader is not None

    def reload(self, dry_run: bool = False) -> p.Reloaded:
        """Re-read the system file and apply it with the fewest restarts; emit ``system.reload`` with the plan.

        ``dry_run``: only say what would change (nothing is emitted). A file that
        fails validation changes nothing: the error is raised (and, unless a dry
        run, carried by ``system.reload``).
        """
        reloader = self._reloader
        if reloader is None:
            raise RuntimeStateError("this runtime was not started from a system file: there is nothing to re-read")
        self._outside("reload")
        with self._reload_lock:
            try:
                if self._lc.phase is not Phase.UP:  # boot or shutdown under way: the plan would be stale
                    raise RuntimeStateError(f"cannot reload while the runtime is {self._lc.phase.value}")
                out = reloader(dry_run)
            except BussdccError as exc:
                if not dry_run:
                    self._reorder()
                    self.emit(m.SystemReload(error=str(exc)))
                raise
            except Exception as exc:  # a bug in user code the file names: said, not raised past the caller
                error = f"{type(exc).__name__}: {exc}"
                if not dry_run:
                    self.emit(m.SystemReload(error=error))
                raise ControlError(error) from exc
            if not dry_run:
                self._reorder()
                self.emit(m.SystemReload(plan=out.plan))
            return out

    def _reorder(self) -> None:
        """Put the workers back in start order (what a reload started was appended): shutdown is its reverse."""
        try:
            self._order_workers()
        except BussdccError:
            pass  # a file that declared the workers was checked: no cycle can be left

    def _reload_soon(self) -> None:
        """Reload on a thread of its own (from the hub thread, for a signal); errors are in system.reload."""

        def run() -> None:
            try:
                self.reload()
            except BussdccError:
                pass  # said in system.reload

        threading.Thread(target=run, name="bussdcc-reload", daemon=True).start()

    def _outside(self, what: str) -> None:
        if self._dispatch.in_handler():
            raise RuntimeStateError(f"{what}() waits on dispatch: call it from a thread of your own, not a handler")

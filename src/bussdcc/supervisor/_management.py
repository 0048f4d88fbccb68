"""Managing workers one by one: add, start, stop, restart, remove, wait for a state (the OTP child set).

Runs on the caller's thread. Each request holds the runtime (``_lifecycle``) so
that requests, boot and shutdown never interleave, waits on the hub thread for
the supervisor to act, then on the dispatch thread until what was said about
the change is dispatched: when a method returns, the messages announcing the
state it returns have reached every Process and Interface.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterable

from ..errors import BootError, RegistrationError, RuntimeStateError, UnknownWorker, WorkerStartError, WorkerTimeout
from ..kernel import Device, Service
from ._assembly import Assembly
from ._dispatch import Dispatch
from ._lifecycle import Lifecycle, Phase
from ._registry import Registry
from ._supervisor import SpawnRefused
from ._workers import Incarnation, Worker, WorkerState, WorkerStatus

_BOOT_GRACE = 5.0
_IDLE = (WorkerState.STOPPED, WorkerState.FAILED)


class WorkerManagement:
    """The worker-management methods of :class:`Runtime` (a base class of it)."""

    _parts: Assembly | None
    _lc: Lifecycle
    _registry: Registry
    _dispatch: Dispatch
    _changed: threading.Condition

    # ---- the public API ----------------------------------------------------------------

    def worker(self, name: str) -> WorkerStatus:
        """The status of the worker ``name`` (:class:`UnknownWorker` if there is none)."""
        return self._status(name)

    def component(self, name: str) -> Service | Device:
        """The registered Service or Device named ``name`` (:class:`UnknownWorker` if none)."""
        return self._registry.find(name)

    def start_worker(self, name: str) -> WorkerStatus:
        """Start the stopped or failed worker ``name``; return once it runs (:class:`WorkerStartError` if not)."""
        self._outside_handlers("start_worker")
        with self._lc.hold(live=True):
            return self._start(name)

    def stop_worker(self, name: str) -> WorkerStatus:
        """Stop ``name`` (graceful, then SIGTERM, then SIGKILL) for good; return once it has stopped."""
        self._outside_handlers("stop_worker")
        with self._lc.hold(live=True):
            return self._stop_one(name)

    def restart_worker(self, name: str) -> WorkerStatus:
        """Stop ``name`` if it runs, then start it; return once it runs again."""
        self._outside_handlers("restart_worker")
        with self._lc.hold(live=True):
            if self._live_worker(name).argv == []:
                raise RuntimeStateError(f"{name} is a standalone worker: restart it where it was started")
            self._stop_one(name)
            return self._start(name)

    def remove_worker(self, name: str) -> None:
        """Stop ``name`` if it runs, and forget it (a member of a group cannot be removed)."""
        self._outside_handlers("remove_worker")
        with self._lc.hold(live=True):
            worker = self._live_worker(name)
            if worker.group is not None:
                raise RuntimeStateError(f"{name} is a member of the group {worker.group!r}: it cannot be removed")
            self._stop_one(name)
            parts = self._up()
            sup = parts.supervisor
            parts.hub.call(lambda: sup.remove(name))
            self._registry.drop(worker.component)

    def wait_for_worker(
        self, name: str, state: WorkerState | Iterable[WorkerState], timeout: float = 30.0
    ) -> WorkerStatus:
        """Wait until ``name`` is in ``state`` (or one of them) and the messages saying so are dispatched.

        Raises :class:`WorkerTimeout` after ``timeout`` seconds, :class:`UnknownWorker` for
        a name not registered, :class:`RuntimeStateError` if the runtime is not up or
        this thread is one dispatch needs (a handler).
        """
        self._outside_handlers("wait_for_worker")
        wanted = frozenset((state,) if isinstance(state, WorkerState) else state)
        deadline = time.monotonic() + timeout
        # Every move of a worker's state notifies (Worker.move, on the hub thread).
        with self._changed:
            while (worker := self._live_worker(name)).state not in wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    states = ", ".join(sorted(s.value for s in wanted))
                    raise WorkerTimeout(f"{name} is {worker.state}, not {states}, after {timeout:g}s")
                self._changed.wait(remaining)
        # The hub turn that changed its state has posted what it said; dispatch it before returning.
        parts = self._up()
        remaining = max(0.0, deadline - time.monotonic())
        try:
            parts.hub.call(lambda: None, timeout=remaining)
        except Exception:
            pass  # the hub is gone (shutdown): what it posted is dispatched by the barrier below
        if not parts.dispatcher.barrier(max(0.0, deadline - time.monotonic())):
            raise WorkerTimeout(f"{name} is {worker.state}, but dispatch did not catch up within {timeout:g}s")
        return self._status(name)

    # ---- the control plane's own ---------------------------------------------------------

    def add_exec_worker(self, component: Service | Device, argv: list[str]) -> None:
        """Register and start a worker run by exec'ing ``argv`` (``[]``: one that joins by itself); control plane."""
        with self._lc.hold(live=True):
            self._add(component, argv)

    def _add(self, component: Service | Device, argv: list[str] | None) -> None:
        if not isinstance(component, Service | Device):
            raise RegistrationError(f"a worker is a Service or a Device, not {type(component).__name__}")
        what = "device" if isinstance(component, Device) else "service"
        self._registry.check_worker(component, what, self._registry.workers())
        parts = self._parts
        if parts is None:
            self._registry.put(component)  # not booted: it starts with the others at boot
            return
        self._add_after_boot(parts, component, argv)

    def _add_after_boot(self, parts: Assembly, component: Service | Device, argv: list[str] | None) -> None:
        if self._lc.phase is Phase.STOPPING:
            raise RegistrationError(f"cannot start {component.name!r}: the runtime is shutting down")
        sup, hub = parts.supervisor, parts.hub
        pickled: bytes | None = None
        try:
            # The fork server was made at boot and never saw this object.
            if argv is None:
                pickled = pickle.dumps(("device" if isinstance(component, Device) else "service", component))
        except Exception as exc:
            raise RegistrationError(
                f"{component.name!r} is registered after boot, so it must be picklable: {exc!r}"
            ) from exc
        start = argv != [] and not (isinstance(component, Service) and not component.enabled)

        def add() -> None:
            sup.add(component, pickled=pickled, argv=argv)
            if not start:
                return
            try:
                sup.start(component.name)
            except BaseException as exc:
                # A refused start leaves no worker behind, `starting` with no process and its name taken.
                sup.remove(component.name)
                self._registry.drop(component)
                if isinstance(exc, SpawnRefused):
                    raise RegistrationError(f"cannot start {component.name!r}: {exc}") from exc
                raise

        if self._dispatch.in_handler():
            self._registry.put(component)
            hub.call_soon(add)  # waiting here could deadlock the hub: it starts in the background
            return
        hub.call(add)
        # Registered from now on, whatever the wait below says: the supervisor has it.
        self._registry.put(component)
        self._notify()
        if start:
            self._wait_started(sup.workers[component.name])

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _start_worker(self, parts: Assembly, name: str) -> Incarnation:
        sup = parts.supervisor
        inc = parts.hub.call(lambda: sup.start(name))
        self._notify()
        self._wait_started(sup.workers[name])
        return inc

    def _wait_started(self, worker: Worker, inc: Incarnation | None = None, *, gated: bool = False) -> None:
        if inc is None:
            inc = worker.current
        limit = worker.component.start_timeout
        # A gated one may take its start_timeout to say hello, then as long again from its Go.
        limit = 2 * limit if gated else limit
        if inc is not None and not inc.outcome.wait(limit + _BOOT_GRACE):
            raise BootError(f"worker {worker.name!r} neither became ready nor failed in time")
        # What was said about its start is dispatched before boot goes on; what the worker
        # sends afterwards need not be (a handler may well wait for boot to return).
        parts = self._parts
        if inc is not None and parts is not None:
            parts.dispatcher.wait_for(inc.ticket, None)
        pending = self._lc.pending
        if pending is not None:
            raise BootError(f"boot interrupted: {pending}")

    def _stop_worker(self, name: str) -> None:
        parts = self._parts
        assert parts is not None
        sup = parts.supervisor
        worker = parts.hub.call(lambda: sup.stop(name))
        self._notify()
        comp = worker.component
        worker.done.wait(comp.stop_timeout + comp.kill_timeout + _BOOT_GRACE)
        self._settle()

    def _settle(self) -> None:
        """Wait until what the hub has handed over so far is dispatched (keeps lifecycle order)."""
        parts = self._parts
        if parts is not None:
            # As long as dispatch needs: the order of lifecycle messages is part of the contract.
            parts.dispatcher.barrier(None)

    def join_worker(self, component: Service | Device, pid: int) -> Incarnation:
        """Take process ``pid`` as the next incarnation of the standalone worker ``component`` (control plane)."""
        with self._lc.hold(live=True):
            parts = self._up()
            sup = parts.supervisor
            existing = sup.workers.get(component.name)
            if existing is None:
                self._add(component, [])
            elif existing.argv != []:
                raise RuntimeStateError(f"a worker named {component.name!r} exists and is not a standalone one")
            inc = parts.hub.call(lambda: sup.join(component.name, pid))
            self._notify()
            return inc

    def worker_exited(self, pid: int) -> None:
        """Process ``pid``, a standalone worker's, has ended (any thread; control plane)."""
        parts = self._parts
        if parts is not None:
            sup = parts.supervisor
            parts.hub.call_soon(lambda: sup.on_exit(pid, None))

    # ---- helpers ----------------------------------------------------------------------

    def _up(self) -> Assembly:
        parts = self._parts
        if parts is None:
            raise RuntimeStateError("the runtime is not up")
        return parts

    def _outside_handlers(self, what: str) -> None:
        if self._dispatch.in_handler():
            raise RuntimeStateError(f"{what}() waits on dispatch: call it from a thread of your own, not a handler")

    def _live_worker(self, name: str) -> Worker:
        workers = self._up().supervisor.workers
        worker = workers.get(name)
        if worker is None:
            raise UnknownWorker(name, tuple(sorted(workers)))
        return worker

    def _status(self, name: str) -> WorkerStatus:
        for status in self._up().supervisor.statuses():
            if status.name == name:
                return status
        raise UnknownWorker(name, tuple(sorted(self._up().supervisor.workers)))

    def _start(self, name: str) -> WorkerStatus:
        worker = self._live_worker(name)
        if worker.argv == []:
            raise RuntimeStateError(f"{name} is a standalone worker: start it where it was started")
        parts = self._up()
        sup = parts.supervisor

        def go() -> Incarnation:
            if worker.state not in _IDLE:
                raise RuntimeStateError(f"{name} is {worker.state} already")
            try:
                return sup.start(name)
            except SpawnRefused as exc:
                raise WorkerStartError(f"{name} did not start: {exc}") from exc

        inc = parts.hub.call(go)
        self._notify()
        inc.outcome.wait(worker.component.start_timeout + _BOOT_GRACE)
        parts.dispatcher.wait_for(inc.ticket, None)
        if inc.ready and worker.current is inc:
            return self._status(name)
        raise WorkerStartError(f"{name} did not start: {worker.last_exit or worker.state}")

    def _stop_one(self, name: str) -> WorkerStatus:
        worker = self._live_worker(name)
        if worker.state not in _IDLE:
            self._stop_worker(name)
            if worker.state not in _IDLE:
                raise RuntimeStateError(f"{name} did not stop: it is {worker.state}")
        return self._status(name)

"""The composition root: the machinery of one boot, built in one place and taken down in one place.

Runs on the thread that boots (``assemble``) and the one that shuts down
(``Assembly.close``). Every collaborator is given what it needs before any
thread that uses it starts: the dispatch thread, the hub thread and the control
thread start only once the whole graph exists.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BootError
from ..kernel import ClockProtocol, Device, Message, Service, StateStore, Strategy
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ..kernel._boundary import SlotTable
from ..kernel._layout import SLOTS_FILE, workers_endpoint
from . import _fds
from ._calls import ParentPort
from ._control import ControlServer
from ._dispatcher import Dispatcher
from ._forkserver import ForkServer
from ._hub import Hub
from ._managed import ManagedRuntime
from ._output import OutputSink
from ._postmortem import LogOptions, PostMortem, open_log_dir
from ._rundir import RunDirGuard, make_run_dir, remove_run_dir
from ._supervisor import Supervisor

if TYPE_CHECKING:
    from ._http import HttpServer

#: The worker entry point, named rather than imported: supervisor and worker stay apart.
WORKER_ENTRY = "bussdcc.worker._main:run"


class Hooks:
    """What the machinery calls back into the runtime for (each says from which thread)."""

    def __init__(
        self,
        *,
        emit: Callable[[Message], None],
        emit_queued: Callable[[Message], None],
        dispatch_item: Callable[[p.Envelope, bytes, str, int, int], None],
        fail: Callable[[str], None],
        tap: Callable[[int, bytes], None],
        changed: Callable[[], None],
    ) -> None:
        #: Dispatch now, on the calling thread.
        self.emit = emit
        #: Dispatch on the dispatch thread, after what is queued (hub thread).
        self.emit_queued = emit_queued
        #: Dispatch an item a worker sent (dispatch thread).
        self.dispatch_item = dispatch_item
        #: A failure the runtime cannot go on with (hub thread).
        self.fail = fail
        #: Show a line of worker output to control subscribers (output thread).
        self.tap = tap
        #: Some worker changed state (hub thread).
        self.changed = changed


class Assembly:
    """The run directory, fork server, dispatcher, supervisor, hub, control server and output of one boot."""

    def __init__(
        self,
        *,
        run_dir: Path,
        slots: SlotTable,
        fork: ForkServer,
        dispatcher: Dispatcher,
        supervisor: Supervisor,
        hub: Hub,
        control: ControlServer,
        output: OutputSink,
        guard: RunDirGuard,
        calls: ParentPort,
        web: HttpServer | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.endpoint = hub.endpoint
        self.slots = slots
        self.fork = fork
        self.dispatcher = dispatcher
        self.supervisor = supervisor
        self.hub = hub
        self.control = control
        self.output = output
        self.guard = guard
        self.calls = calls
        #: The metrics and status page server, when asked for (``Runtime(http=...)``).
        self.web = web

    def close(self) -> None:
        """Stop every thread and free every resource, in the reverse of the order they were made."""
        if self.web is not None:
            self.web.stop()
        self.guard.stop()  # the directory is ours to remove now
        self.control.stop()
        self.calls.detach()
        router = self.supervisor.calls
        try:
            self.hub.call(lambda: router.close("the runtime shut down"), timeout=5.0)
        except Exception:
            pass  # the hub is gone: its callers' own deadlines end their waits
        self.hub.stop()
        self.dispatcher.stop()
        self.output.close()
        self.supervisor.postmortem.close()
        self.fork.close()
        self.slots.close()
        remove_run_dir(self.run_dir)


def assemble(
    *,
    name: str,
    runtime: ManagedRuntime,
    workers: Sequence[Service | Device],
    groups: dict[str, tuple[Strategy, list[str]]],
    state: StateStore,
    clock: ClockProtocol,
    calls: ParentPort,
    hooks: Hooks,
    waiting: tuple[threading.Thread, ...] = (),
    http: str | None = None,
    logs: LogOptions | None = None,
) -> Assembly:
    """Build and start the machinery of one boot; on failure, nothing is left behind."""
    if logs is not None:
        open_log_dir(logs.directory)  # a BootError before anything is made
    # Before anything is made: the fork server and every worker inherit it too.
    _fds.raise_limit()
    run_dir = make_run_dir(name)
    made: list[Callable[[], None]] = [lambda: remove_run_dir(run_dir)]
    try:
        return _assemble(run_dir, made, runtime, workers, groups, state, clock, calls, hooks, waiting, http, logs)
    except BaseException:
        for undo in reversed(made):
            try:
                undo()
            except Exception:
                pass  # the boot error is the one to report
        raise


def _assemble(  # noqa: PLR0917  (one call site, in the order things are made)
    run_dir: Path,
    made: list[Callable[[], None]],
    runtime: ManagedRuntime,
    workers: Sequence[Service | Device],
    groups: dict[str, tuple[Strategy, list[str]]],
    state: StateStore,
    clock: ClockProtocol,
    calls: ParentPort,
    hooks: Hooks,
    waiting: tuple[threading.Thread, ...],
    http: str | None,
    logs: LogOptions | None,
) -> Assembly:
    endpoint = workers_endpoint(run_dir)
    slots = SlotTable(path=run_dir / SLOTS_FILE)
    made.append(slots.close)
    components: dict[str, tuple[str, object]] = {
        w.name: ("device" if isinstance(w, Device) else "service", w) for w in workers
    }
    try:
        fork = ForkServer(
            components, endpoint=endpoint, slots=slots, entry=WORKER_ENTRY, run_dir=run_dir, waiting=waiting
        )
    except OSError as exc:
        raise BootError(f"cannot start the fork server: {exc}") from exc
    made.append(fork.close)
    # The dispatcher tells the hub when it has room again; the hub exists before either thread starts.
    dispatcher = Dispatcher(on_room=lambda: hub.wake())  # noqa: PLW0108  (hub is made below)
    sup = Supervisor(
        fork=fork,
        slots=slots,
        state=state,
        clock=clock,
        emit=hooks.emit_queued,
        emit_now=hooks.emit,
        dispatch_item=hooks.dispatch_item,
        dispatcher=dispatcher,
        halt=hooks.fail,
        changed=hooks.changed,
    )
    for comp in workers:
        sup.add(comp)
    for group, (strategy, members) in groups.items():
        sup.add_group(group, strategy, members)
    hub = Hub(endpoint, fork.fileno(), sup)
    # The Supervisor takes its hub, guard and output sink as attributes, all set here, before
    # the hub thread that reads them starts.
    sup.hub = sup.calls.hub = hub
    output = sup.on_output = OutputSink(hooks.tap)
    made.append(output.close)
    if logs is not None:
        sup.postmortem = PostMortem(logs.open(hub))
        made.append(sup.postmortem.close)
    # Refused control connections are counted and reported by the supervisor, on the hub thread.
    control = ControlServer(
        runtime, run_dir, denied=lambda: hub.call_soon(lambda: sup.control_denied(control.denied_since()))
    )
    guard = sup.run_dir_guard = RunDirGuard(
        run_dir,
        schedule=hub.timers.call_on_tick,  # on the periodic jobs' grid: no wake-up of its own
        rebind=hub.rebind,
        restore=lambda: control.restore(
            lambda error: hooks.emit(m.RuntimeFault(part="control", kind="rebind_failed", error=error))
        ),
        report=lambda error: hooks.emit_queued(m.RuntimeFault(part="run_dir", kind="run_dir_lost", error=error)),
        closed=lambda: not hub.accepting,
    )
    made.append(guard.stop)
    dispatcher.start()
    made.append(dispatcher.stop)
    hub.start()
    made.append(hub.stop)
    calls.attach(hub, sup.calls, dispatcher)
    made.append(calls.detach)
    control.start()
    made.append(control.stop)
    hub.call_soon(guard.start)
    fd_guard = _fds.FdGuard(control.accept, hub.fault, hub.recovered, hub.accept)

    def watch_fds() -> None:
        hub.every(_fds.PERIOD, fd_guard.check, "fd_watch")

    hub.call_soon(watch_fds)
    web = None
    if http is not None:
        from ._http import HttpServer

        web = HttpServer(runtime, sup, dispatcher, http, control.secret)
        web.start()
        made.append(web.stop)
        control.listener = web.tap
    return Assembly(
        run_dir=run_dir,
        slots=slots,
        fork=fork,
        dispatcher=dispatcher,
        supervisor=sup,
        hub=hub,
        control=control,
        output=output,
        guard=guard,
        calls=calls,
        web=web,
    )

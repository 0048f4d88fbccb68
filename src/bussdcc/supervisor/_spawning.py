"""Starting workers: incarnations, fork requests, joins, readiness and start timeouts (hub thread)."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable

from ..errors import RegistrationError
from ..kernel import Device
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ._books import Books, NoForkServer, NoFreeSlot, SpawnRefused
from ._cgroup import oom_counter
from ._forksafety import threads_hint
from ._watchdog import Verdict
from ._workers import Incarnation, Worker, WorkerState


class Spawning:
    """Makes incarnations and watches each until it is ready; reports those that do not make it."""

    def __init__(
        self,
        books: Books,
        *,
        kill: Callable[[Worker, Incarnation, Verdict], None],
        ended: Callable[[Worker, Incarnation, int | None], None],
        watch: Callable[[], None],
        watch_ready: Callable[[Worker, Incarnation], None],
    ) -> None:
        self.books = books
        #: Where a start timeout is reported: an incarnation to kill, or one that never had a process.
        self._kill = kill
        self._ended = ended
        #: Makes sure the watchdog looks at live workers.
        self._watch = watch
        #: Hands a ready incarnation to the watchdog.
        self._watch_ready = watch_ready

    def start(self, name: str, *, gated: bool = False) -> Incarnation:
        """Start a new incarnation of ``name`` (``gated``: it waits for :meth:`release` to run its component)."""
        worker = self.books.workers[name]
        worker.intent = "run"
        worker.died_at = None  # started by request: not a respawn
        worker.done.clear()
        try:
            return self.spawn(worker, gated=gated and worker.argv is None)
        except BaseException:
            worker.done.set()  # refused: it stays as it was, stopped or failed
            raise

    # A gated incarnation keeps boot's order by construction: it does everything up to its
    # Hello ahead of its turn, but its component runs only once boot comes to it (Go), after
    # every worker before it is ready and announced. Whatever ends it before Go is said at its
    # turn too (``Exits.finalize`` holds it back), so nothing about it comes out of order.

    def release(self, name: str) -> Incarnation | None:
        """Boot has come to the gated ``name``: Go now, or once it says hello; an end held back is said now."""
        worker = self.books.workers[name]
        inc = worker.current
        if inc is None or not inc.gated:
            return inc
        inc.go_wanted = True
        if inc.exited:
            inc.gated = False
            self._ended(worker, inc, inc.exit_code)  # its end, held back until now
        elif inc.hello:
            self.go(worker, inc)
        return inc

    def go(self, worker: Worker, inc: Incarnation) -> None:
        """Let a gated incarnation that said hello run its component; its start time counts from now."""
        b = self.books
        inc.gated = False
        if inc.stop_sent:
            return  # stopped meanwhile: it ends at its gate
        inc.cancel_timers()  # the wait for its Hello, its only timer yet
        if worker.wants_events:
            b.targets[inc.identity] = worker  # events from now on, as for one that starts at once
        b._hub().send(inc.identity, p.encode(p.Go()))
        self._time_start(worker, inc)

    def spawn(self, worker: Worker, *, gated: bool = False) -> Incarnation:
        """Ask the fork server for the next incarnation of ``worker`` (``SpawnRefused`` if none can be made)."""
        inc = self._fork(worker, gated=gated, spare=False)
        worker.move(WorkerState.STARTING)
        self._time_start(worker, inc)  # gated: only until its Hello (see _start_timed_out)
        return inc

    def spawn_spare(self, worker: Worker) -> Incarnation:
        """Fork the next incarnation of ``worker`` ahead, gated, as its spare (see ``_spares``).

        It is not the worker's current incarnation and its number is not counted yet: until a
        respawn releases it nothing of it is said (``quiet``), and nothing else changes.
        """
        inc = self._fork(worker, gated=True, spare=True)
        inc.quiet = True
        self._time_start(worker, inc)  # until its Hello, as for any gated incarnation
        return inc

    def _fork(self, worker: Worker, *, gated: bool, spare: bool) -> Incarnation:
        b = self.books
        assert b.hub is not None
        if b.fatal is not None:
            raise NoForkServer(f"cannot start workers: {b.fatal}")
        if not b._free_slots:
            raise NoFreeSlot("no free worker slot (too many live workers)")
        if worker.argv is not None:
            self._check_slots_file()
        prior = worker.current
        inc = self._new_incarnation(worker, spare=spare)
        b._forking[worker.name, inc.number] = (worker, inc)
        try:
            b.fork.spawn(
                worker.name,
                inc.number,
                inc.slot,
                worker.pickled,
                worker.argv,
                identity=inc.identity,
                token=inc.token,
                gated=gated,
            )
        except BaseException as exc:
            # Nothing was started: no identity or slot stays taken for it, whatever went wrong,
            # and it stays in the state it was in (no process is on its way).
            del b._by_identity[inc.identity]
            del b._forking[worker.name, inc.number]
            b._free_slots.append(inc.slot)
            if spare:
                worker.spare = None
            else:
                worker.current = prior
            if isinstance(exc, OSError):
                raise NoForkServer(f"cannot reach the fork server: {exc}") from exc
            raise
        inc.gated = gated
        return inc

    def join(self, name: str, pid: int) -> Incarnation:
        """Adopt process ``pid``, started outside the fork server, as the next incarnation of ``name``."""
        b = self.books
        worker = b.workers[name]
        if worker.current is not None:
            raise RegistrationError(f"worker {name!r} is {worker.state} already")
        if not b._free_slots:
            raise NoFreeSlot("no free worker slot (too many live workers)")
        self._check_slots_file()
        worker.intent = "run"
        worker.done.clear()
        inc = self._new_incarnation(worker)
        worker.move(WorkerState.STARTING)
        inc.pid = pid
        inc.external = True
        b._by_pid[pid] = (worker, inc)
        self._time_start(worker, inc)
        return inc

    def _new_incarnation(self, worker: Worker, *, spare: bool = False) -> Incarnation:
        """The next incarnation of ``worker``, with a fresh slot, routing id and secret (``spare``: as its spare)."""
        b = self.books
        slot = b._free_slots.pop()
        b.slots.reset(slot)
        # Random, so that nobody can claim an incarnation's routing id before it connects
        # (a ROUTER ignores a second peer with a taken id), and the secret proves the Hello.
        inc = Incarnation(worker.incarnations + 1, secrets.token_hex(16).encode(), slot)
        inc.token = secrets.token_bytes(32)
        inc.refused_at = b.refused
        inc.denied_at = b.denied
        if spare:
            worker.spare = inc  # numbered as the next, counted only once released (``_spares``)
        else:
            worker.incarnations = inc.number
            worker.current = inc
        b._by_identity[inc.identity] = (worker, inc)
        return inc

    def _time_start(self, worker: Worker, inc: Incarnation) -> None:
        timeout = worker.component.start_timeout
        inc.timers.append(self.books._hub().call_later(timeout, lambda: self._start_timed_out(worker, inc)))
        self._watch()

    def _check_slots_file(self) -> None:
        """Refuse a worker that would open the slots file by path, once that file is lost."""
        guard = self.books.run_dir_guard
        if guard is not None and guard.slots_lost:
            # It would make a slots file of its own, which we never read: its counters and
            # heartbeats unseen, it would be killed as hung over and over.
            raise SpawnRefused(
                f"the run directory {guard.path} was deleted under the runtime and its slots file cannot be "
                "restored: a worker started by exec cannot join until the runtime restarts"
            )

    def on_spawned(self, report: p.Spawned) -> None:
        """The fork server made the process of an incarnation."""
        b = self.books
        entry = b._forking.pop((report.worker, report.incarnation), None)
        if entry is not None:
            entry[1].pid = report.pid
            b._by_pid[report.pid] = entry
            entry[1].oom = oom_counter(report.pid)
        else:  # an incarnation already ended without it (its start timed out): not wanted
            try:
                os.killpg(report.pid, signal.SIGKILL)
            except OSError:
                pass

    def on_spawn_failed(self, report: p.SpawnFailed) -> None:
        """The fork server could not make the process of an incarnation."""
        entry = self.books._forking.pop((report.worker, report.incarnation), None)
        if entry is not None:
            entry[1].spawn_error = report.error
            entry[1].spawn_errno = report.errno
            self._ended(*entry, None)

    def on_ready(self, worker: Worker, inc: Incarnation) -> None:
        """An incarnation said Ready."""
        b = self.books
        inc.ready = True
        inc.ready_at = time.monotonic()
        self._watch_ready(worker, inc)
        if worker.current is not inc or inc.cause is not None:
            return  # judged already (a hung one is killed once its stacks are in): its end is what comes next
        if worker.state is WorkerState.STARTING:
            worker.move(WorkerState.RUNNING)
        if worker.died_at is not None:
            b.respawn_latency.observe(inc.ready_at - worker.died_at)
            worker.died_at = None
        worker.started_at = b.clock.now_utc()
        assert inc.pid is not None  # known from Hello at the latest
        b.emit(m.WorkerStarted(worker=worker.name, role=worker.role, pid=inc.pid, incarnation=inc.number))
        if isinstance(worker.component, Device):
            b.emit(m.DeviceAttached(device=worker.name, kind=worker.kind))
        else:
            b.emit(m.ServiceStarted(service=worker.name))
        inc.ticket = b.dispatcher.posted
        inc.outcome.set()
        b.calls.ready(worker, inc)
        b._advance_group(worker)

    def _start_timed_out(self, worker: Worker, inc: Incarnation) -> None:
        if inc.ready or inc.exited or (inc.gated and inc.hello):
            return  # a gated one that said hello waits for its turn: its start time counts from Go
        b = self.books
        limit = worker.component.start_timeout
        if inc.pid is None:
            # No process was ever reported (a fork server stopped or far behind): there is nothing
            # to kill, so it ends now rather than stay `starting` with no pid; a late one is killed.
            inc.blame("start_timeout", f"start timeout: the fork server reported no process within {limit:g}s")
            self._ended(worker, inc, None)
            return
        if worker.role == "device" and b.slots.activity(inc.slot)[0] == "start":
            verdict = Verdict("hung", f"hung: connect ran longer than start_timeout {limit:g}s")
        elif not inc.hello and b.slots.read(inc.slot)[1] == 0:
            # Not even sent (its own count in shared memory says so): it never got as far as its socket.
            verdict = Verdict("start_timeout", f"start timeout: the worker never said hello within {limit:g}s")
            elsewhere = b.refused - inc.refused_at - inc.wrong_tokens - inc.unverified
            seen = [
                f"{n} {one if n == 1 else many}"
                for n, one, many in (
                    (
                        inc.denied,
                        "connection with its routing id but a wrong token",
                        "connections with its routing id but a wrong token",
                    ),
                    (
                        b.denied - inc.denied_at - inc.denied,
                        "connection with wrong credentials",
                        "connections with wrong credentials",
                    ),
                    (elsewhere, "frame from an unknown peer", "frames from unknown peers"),
                    (inc.wrong_tokens, "hello with a wrong token", "hellos with a wrong token"),
                    (inc.unverified, "frame before a verified hello", "frames before a verified hello"),
                )
                if n
            ]
            if seen:
                verdict = Verdict(verdict.cause, f"{verdict.reason}; {', '.join(seen)} were rejected meanwhile")
        else:
            verdict = Verdict("start_timeout", f"start timeout: not ready within {limit:g}s")
        if worker.argv is None and not inc.external:  # forked from the fork server
            verdict = Verdict(verdict.cause, verdict.reason + threads_hint(b.fork.threads))
        guard = b.run_dir_guard
        if b.hub is not None and not b.hub.accepting:
            hint = (
                " (the parent is short of file descriptors: the workers' endpoint is closed to new "
                "connections until fewer are open; see runtime.fault part fds)"
            )
            verdict = Verdict(verdict.cause, verdict.reason + hint)
        elif guard is not None and guard.missing():
            hint = f" (the run directory {guard.path} is gone, deleted under the live runtime: workers cannot connect)"
            verdict = Verdict(verdict.cause, verdict.reason + hint)
        self._kill(worker, inc, verdict)

"""The public worker-management API: start, stop, restart, remove, add after boot, wait for a state."""

from __future__ import annotations

import itertools

import pytest

from bussdcc import Context, Runtime, Service, WorkerState
from bussdcc.errors import RuntimeStateError, UnknownWorker, WorkerTimeout

from ._helpers import Recorder

_names = itertools.count()


class Idle(Service):
    """Ticks rarely and does nothing."""

    name = "idle"
    interval = 3600

    def tick(self, ctx: Context) -> None:
        pass


class Crasher(Service):
    """Dies at once, every time: it is given up on."""

    name = "crasher"
    interval = 3600
    restart = False

    def start(self, ctx: Context) -> None:
        raise RuntimeError("boom")


def _runtime(*services: Service) -> tuple[Runtime, Recorder]:
    rt = Runtime(name=f"mgmt{next(_names)}")
    rec = Recorder()
    rt.register_process(rec)
    for service in services:
        rt.add_worker(service)
    return rt, rec


def test_stop_start_restart_and_remove_return_once_their_messages_are_dispatched() -> None:
    rt, rec = _runtime(Idle())
    with rt:
        first = rt.worker("idle")
        assert first.state is WorkerState.RUNNING
        stopped = rt.stop_worker("idle")
        assert stopped.state is WorkerState.STOPPED
        assert rec.of("service.stopped"), "the stop was dispatched before stop_worker returned"
        started = rt.start_worker("idle")
        assert started.state is WorkerState.RUNNING and started.pid not in (None, first.pid)
        assert len(rec.of("service.started")) == 2
        again = rt.restart_worker("idle")
        assert again.state is WorkerState.RUNNING and again.incarnation == 3
        rt.remove_worker("idle")
        assert rt.workers() == []
        with pytest.raises(UnknownWorker) as info:
            rt.worker("idle")
        assert isinstance(info.value, LookupError)


def test_wait_for_worker_returns_after_the_announcing_message_is_dispatched() -> None:
    rt, rec = _runtime()
    with rt:
        rt.add_worker(Crasher())
        status = rt.wait_for_worker("crasher", {WorkerState.FAILED, WorkerState.STOPPED}, timeout=60)
        assert status.state in (WorkerState.FAILED, WorkerState.STOPPED)
        assert rec.of("worker.exited"), "the exit was dispatched before wait_for_worker returned"
        with pytest.raises(WorkerTimeout):
            rt.wait_for_worker("crasher", WorkerState.RUNNING, timeout=0.2)
        with pytest.raises(UnknownWorker):
            rt.wait_for_worker("nobody", WorkerState.RUNNING, timeout=1)


def test_management_needs_a_runtime_that_is_up() -> None:
    rt, _ = _runtime(Idle())
    with pytest.raises(RuntimeStateError):
        rt.start_worker("idle")
    with pytest.raises(RuntimeStateError):
        rt.wait_for_worker("idle", WorkerState.RUNNING, timeout=1)
    with rt, pytest.raises(RuntimeStateError, match="running already"):
        rt.start_worker("idle")
    with pytest.raises(RuntimeStateError):
        rt.stop_worker("idle")


def test_stats_count_calls_in_flight_and_name_the_fork_server() -> None:
    rt, _ = _runtime(Idle())
    assert rt.stats().fork_server_pid is None
    with rt:
        stats = rt.stats()
        assert stats.calls_in_flight == 0 and stats.calls_parked == 0 and stats.emitters_waiting == 0
        assert stats.fork_server_pid is not None

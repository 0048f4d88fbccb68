"""What the control plane may ask of a runtime: the narrow protocol it is written against.

The control endpoint (``_control``, ``_control_ops``) sees a runtime only through
:class:`ManagedRuntime`: the public worker-management API, status and counters,
and three narrow methods for workers that run outside the fork server. Nothing
here runs on a thread of its own; each method says which threads may call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from ..kernel import Device, DeviceHandle, Service
from ..kernel import protocol as p
from ._workers import Incarnation, WorkerState, WorkerStatus

D = TypeVar("D", bound=Device)


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Counters of a runtime since boot."""

    dispatched: int
    rejected: int
    lost: int
    restarts: dict[str, int]
    #: Events not delivered to the Services because shutdown had begun while they were behind.
    undelivered: int = 0
    #: Calls to devices in flight now (sent or parked), and those parked for a device not ready.
    calls_in_flight: int = 0
    calls_parked: int = 0
    #: Replies that matched no call in flight (late, or for a call that timed out).
    late_replies: int = 0
    #: Emitters waiting now for room in the outbox to the workers, and the outbox's weight in bytes.
    emitters_waiting: int = 0
    outbox_bytes: int = 0
    #: The fork server's pid while the runtime is up.
    fork_server_pid: int | None = None


class ManagedRuntime(Protocol):
    """The part of a Runtime the control plane uses (and nothing else)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def booted(self) -> bool: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def log_dir(self) -> Path | None: ...

    def workers(self) -> list[WorkerStatus]: ...
    def worker(self, name: str) -> WorkerStatus: ...
    def component(self, name: str) -> Service | Device: ...
    def device(self, cls: type[D], id: str, *, timeout: float = ..., wait: bool = ...) -> DeviceHandle[D]: ...
    def stats(self) -> RuntimeStats: ...
    def start_worker(self, name: str) -> WorkerStatus: ...
    def stop_worker(self, name: str) -> WorkerStatus: ...
    def restart_worker(self, name: str) -> WorkerStatus: ...
    def remove_worker(self, name: str) -> None: ...
    def wait_for_worker(
        self, name: str, state: WorkerState | Iterable[WorkerState], timeout: float = ...
    ) -> WorkerStatus: ...
    def request_shutdown(self, reason: str | None = None) -> None: ...
    def scale(self, name: str, instances: int) -> list[WorkerStatus]: ...
    def reload(self, dry_run: bool = ...) -> p.Reloaded: ...

    # Workers that run outside the fork server (started from the command line).
    def add_exec_worker(self, component: Service | Device, argv: list[str]) -> None: ...
    def join_worker(self, component: Service | Device, pid: int) -> Incarnation: ...
    def worker_exited(self, pid: int) -> None: ...

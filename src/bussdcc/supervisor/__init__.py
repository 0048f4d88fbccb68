"""The parent side of the process boundary: runtime, dispatch, hub, fork server, supervision."""

from ._replay import ReplayReport
from ._runtime import Runtime, RuntimeStats
from ._variants import SignalRuntime, ThreadedRuntime
from ._workers import WorkerState, WorkerStatus

__all__ = ["ReplayReport", "Runtime", "RuntimeStats", "SignalRuntime", "ThreadedRuntime", "WorkerState", "WorkerStatus"]

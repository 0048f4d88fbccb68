"""The parent side of the process boundary: runtime, dispatch, hub, fork server, supervision."""

from ._runtime import Runtime, RuntimeStats
from ._variants import SignalRuntime, ThreadedRuntime
from ._workers import WorkerState, WorkerStatus

__all__ = ["Runtime", "RuntimeStats", "SignalRuntime", "ThreadedRuntime", "WorkerState", "WorkerStatus"]

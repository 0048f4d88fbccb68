"""The Context a component sees inside its worker process."""

from __future__ import annotations

from ..kernel import Context, EventBus, StateStore, SystemClock
from ..kernel._boundary import WorkerSpec
from ._calls import WorkerPort
from ._channel import Channel


class RemoteRuntime:
    """The worker's view of the runtime that lives in the parent process."""

    def __init__(self, spec: WorkerSpec) -> None:
        self._spec = spec

    @property
    def booted(self) -> bool:
        """A worker only exists while its runtime is up."""
        return True

    @property
    def endpoint(self) -> str:
        """The parent's worker endpoint."""
        return self._spec.endpoint

    @property
    def parent_pid(self) -> int:
        """The pid of the parent runtime."""
        return self._spec.parent_pid


def make_context(spec: WorkerSpec, channel: Channel) -> Context:
    """Build a context whose ``emit`` and state writes go to the parent."""
    bus = EventBus(on_error=channel.emit)
    # The worker keeps its own writes so it reads them back; the parent's
    # store, fed in order with the messages, is the authoritative one.
    state = StateStore(on_set=channel.set_state, on_delete=channel.delete_state)
    return Context(
        clock=SystemClock(),
        events=bus,
        state=state,
        runtime=RemoteRuntime(spec),
        emit=channel.emit,
        calls=WorkerPort(channel),
    )

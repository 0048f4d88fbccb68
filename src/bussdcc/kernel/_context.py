"""What a component may ask of the runtime that hosts it."""

from __future__ import annotations

from typing import Protocol

__all__ = ["RuntimeView"]


class RuntimeView(Protocol):
    """What a component may ask of the runtime that hosts it."""

    @property
    def booted(self) -> bool:
        """Whether the runtime has booted and not yet shut down."""
        ...

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint workers talk to the parent on."""
        ...

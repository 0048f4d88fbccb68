"""The supervision vocabulary shared by the kernel's messages and the supervisor: roles and exit causes."""

from __future__ import annotations

from typing import Literal, TypeAlias

__all__ = ["ExitCause", "Role"]

#: What a worker process runs: a Device or a Service.
Role: TypeAlias = Literal["device", "service"]

#: One word for why an incarnation ended. ``stopped``: it said goodbye when asked; ``exited``: it
#: said goodbye on its own; ``exit_code`` / ``signal``: it died without a word; ``hung``,
#: ``rss_limit``, ``cpu_limit``, ``start_timeout``: the supervisor killed it; ``start_failed``: its
#: connect/start raised; ``spawn_failed``: no process was made; ``error``: it gave up itself;
#: ``unhealthy``: the supervisor killed it for a broken expectation or a failing ``health()``.
ExitCause: TypeAlias = Literal[
    "stopped",
    "exited",
    "exit_code",
    "signal",
    "hung",
    "rss_limit",
    "cpu_limit",
    "start_timeout",
    "start_failed",
    "spawn_failed",
    "error",
    "unhealthy",
]

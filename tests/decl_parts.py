"""Components the declarative-system tests run, importable by path (``tests.decl_parts:...``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bussdcc import Context, Device, Message, Service


@dataclass(slots=True, frozen=True)
class Placed(Message):
    """Where a worker's code runs: pid, ids, working directory, and ``$DECL_VAR``."""

    name = "test.placed"
    worker: str
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    cwd: str
    var: str | None


class Reporter(Service):
    """Says where it runs when it starts, then idles."""

    name = "reporter"
    interval = 3600.0

    def __init__(self, **_: Any) -> None:
        pass

    def start(self, ctx: Context) -> None:
        groups = tuple(sorted(os.getgroups()))
        ctx.emit(
            Placed(self.name, os.getpid(), os.getuid(), os.getgid(), groups, os.getcwd(), os.environ.get("DECL_VAR"))
        )


class Link(Device):
    """A device that only exists in its own process."""

    kind = "link"

    def __init__(self, *, id: str, config: Any = None) -> None:
        super().__init__(id=id, config=config)


def service(name: str, **settings: Any) -> Reporter:
    """A Reporter named ``name`` with ``settings`` set on the instance."""
    svc = Reporter()
    svc.name = name
    svc.stop_timeout = 10.0
    for key, value in settings.items():
        setattr(svc, key, value)
    return svc


def device(name: str, **settings: Any) -> Link:
    """A Link with id ``name`` and ``settings`` set on the instance."""
    dev = Link(id=name)
    for key, value in settings.items():
        setattr(dev, key, value)
    return dev

"""What a worker emits once ready is dispatched after what the runtime said about its start.

(What it emits before it is ready, in ``start()`` or ``connect()``, comes before: it was said first.)
"""

from __future__ import annotations

from bussdcc import Context, Device, Event, Message, Service

from ._helpers import MakeRuntime, Seq


class Eager(Service):
    """Emits at once, in start() and in its first tick, so its messages race its own announcement."""

    interval = 3600.0

    def start(self, ctx: Context) -> None:
        ctx.emit(Seq(i=0, pad=self.name))

    def tick(self, ctx: Context) -> None:
        ctx.emit(Seq(i=1, pad=self.name))


class Plain(Device):
    """A device with nothing to say."""


def _first(events: list[Event[Message]], name: str, who: str, i: int | None = None) -> int:
    """The index of the first ``name`` message about the worker ``who`` (for test.seq: its item ``i``)."""
    for k, evt in enumerate(events):
        fields = evt.payload.to_dict()
        about = {fields.get("worker"), fields.get("service"), fields.get("device"), fields.get("pad")}
        if evt.name == name and who in about and (i is None or fields.get("i") == i):
            return k
    raise AssertionError(f"no {name} for {who}")


def test_each_workers_first_messages_follow_its_start_announcements(make_runtime: MakeRuntime) -> None:
    devices = [Plain(id=f"dev-{k}") for k in range(4)]
    services = [Eager() for _ in range(4)]
    for k, svc in enumerate(services):
        svc.name = f"svc-{k}"
    _, rec = make_runtime("boot-order", *devices, *services)
    rec.wait_for("test.seq", lambda e: e.payload.to_dict()["i"] == 1, count=len(services), timeout=60)
    events = list(rec.events)
    for svc in services:
        ticked = _first(events, "test.seq", svc.name, i=1)
        assert _first(events, "worker.started", svc.name) < ticked, svc.name
        assert _first(events, "service.started", svc.name) < ticked, svc.name
    # The seed's order: every device attached, in registration order, before any service starts.
    attached = [e.payload.to_dict()["device"] for e in events if e.name == "device.attached"]
    assert attached == [d.id for d in devices]

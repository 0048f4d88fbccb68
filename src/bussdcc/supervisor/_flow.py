"""The parent's flow control: every queue it keeps is bounded in bytes, and this is the one rule.

An item weighs its encoded length plus :data:`ITEM_OVERHEAD` (what Python spends
to hold it), so a flood of tiny messages is bounded as surely as a few large ones.

When a bound is hit, **whoever adds waits for room**, and room always comes, or
the wait is not taken:

- Worker -> parent: above :data:`DISPATCH_BYTES` waiting for dispatch, the hub
  stops reading, so the workers' own ``emit`` blocks (back-pressure to the source).
- Parent -> Services: an ``emit`` on any thread (the main thread, a handler, the
  dispatch thread itself) waits while :data:`OUTBOX_BYTES` are undelivered. The
  hub alone makes room, on its own thread, needing nothing from the emitter: it
  hands the outbox to the Services unless one of them has :data:`QUEUE_BYTES`
  queued (then it also stops reading, so workers feel it too). A Service that is
  behind either takes its events, which makes room, or takes none for its
  ``event_timeout`` and is killed as hung, which makes room as well. So a wait on
  the dispatch thread is bounded by the slowest Service's ``event_timeout``, and
  no handler can deadlock the hub.
- Shutdown never waits: it is what ends a stuck consumer. Once it has begun, an
  event that finds the outbox full is dropped for the Services (they are being
  stopped) and counted: ``rt.stats().undelivered``, and one ``runtime.fault`` before
  ``runtime.shutdown``. So every event dispatched is delivered or counted.

The accounting invariant, per worker incarnation: **emitted = dispatched + lost**.
A worker numbers each item and counts it in shared memory before it is sent
(``emitted``); the parent counts what it received and handed to dispatch
(``dispatched``); a gap in the numbering, or what a dead worker counted but never
delivered, is ``lost`` (``worker.exited`` reports all three). Back-pressure never
drops a worker's item: it only makes the worker wait, so ``lost`` comes from deaths
alone.

Queues that cannot wait for room drop and count instead, and say so: worker output
(:data:`OUTPUT_BYTES`, the lines not shown) and the control plane's subscribers
(:data:`SUBSCRIBER_BYTES`, the messages a slow follower missed). Calls to devices
are bounded by their callers, each blocked on its own call until its timeout.
"""

from __future__ import annotations

from typing import Final

#: What Python spends on one queued item beyond its bytes (object header, deque slot, tuple).
ITEM_OVERHEAD: Final = 64
#: Undelivered events for the Services before emitters wait.
OUTBOX_BYTES: Final = 2 * 1024 * 1024
#: Frames queued for one worker (beyond its pipe) before the hub stops handing out events.
QUEUE_BYTES: Final = 2 * 1024 * 1024
#: Work waiting for the dispatch thread before the hub stops reading from workers.
DISPATCH_BYTES: Final = 8 * 1024 * 1024
#: The same while a handler waits on a device call (the hub must read on for the reply):
#: past it the hub stops reading anyway, and that call ends at its own timeout.
DISPATCH_HARD_BYTES: Final = 64 * 1024 * 1024
#: Worker output waiting for our own stdout/stderr before new output is dropped (counted).
OUTPUT_BYTES: Final = 4 * 1024 * 1024
#: Messages queued for the control plane's subscribers, and kept as its backlog.
SUBSCRIBER_BYTES: Final = 16 * 1024 * 1024


def weigh(items: int, size: int) -> int:
    """The weight of ``items`` queued items of ``size`` bytes in all."""
    return size + items * ITEM_OVERHEAD

"""``bussdcc replay FILE TARGET``: a system's Processes and Interfaces fed a recording."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from typing import Any

from ..errors import BussdccError
from ..kernel import Message
from ..kernel._readback import RecordedFile
from ._launch import _print_event, load_runtime


def replay(args: argparse.Namespace) -> int:
    """Load TARGET as ``bussdcc run`` does, replay the recording into it, say what was done."""
    speed: float | None = None if args.fast else args.speed
    if speed is not None and not 0 < speed < math.inf:
        raise BussdccError(f"--speed must be a positive number, not {speed:g}")
    for path in args.file:
        RecordedFile(path)  # a file that is not a recording is refused before the target is imported
    rt = load_runtime(args.target)
    if args.verbose:
        rt.events.subscribe(Message, _print_event)

    def on_signal(signum: int, frame: Any) -> None:
        # Never block in a signal handler: the replay ends at its next message.
        reason = signal.strsignal(signum) or f"signal {signum}"
        threading.Thread(target=rt.shutdown, args=(reason,), name="bussdcc-stop", daemon=True).start()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    print(f"bussdcc: replaying {' '.join(args.file)} into {rt.name}", file=sys.stderr, flush=True)
    try:
        report = rt.replay(*args.file, speed=speed, names=args.names or ())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    unreadable = sum(report.unreadable.values())
    said = (
        f"bussdcc: replayed {report.fed} messages ({report.reproduced} produced again by the processes, "
        f"{report.filtered} left out, {unreadable} unreadable) covering {report.span:.3f}s of recorded time"
    )
    said += f"; ran {', '.join(report.receivers) or 'no processes'}"
    if report.workers:
        said += f"; not started: {', '.join(report.workers)}"
    if report.stopped is not None:
        said += f"; stopped early: {report.stopped}"
    print(said, file=sys.stderr, flush=True)
    for name, count in sorted(report.unreadable.items()):
        print(f"bussdcc: {count} recorded {name!r} messages could not be rebuilt", file=sys.stderr)
    for name, count in sorted(report.without_event.items()):
        print(f"bussdcc: {count} recorded {name!r} messages were fed without the event they carried", file=sys.stderr)
    if report.recorder_dropped:
        print(f"bussdcc: the recorder dropped {report.recorder_dropped} messages of this run", file=sys.stderr)
    for path in report.truncated:
        print(f"bussdcc: {path} ends in an incomplete record: replayed up to it", file=sys.stderr)
    return 0

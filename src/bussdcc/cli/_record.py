"""``bussdcc record`` and the recording options of ``bussdcc run``: a live event stream to MCAP files."""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
from typing import Any

import msgspec

from .._version import __version__
from ..errors import BussdccError, ConfigError, ProtocolError
from ..kernel import _builtin as m
from ..kernel import protocol as p
from ..kernel._recording import Recorder, Recording
from . import _client

__all__ = ["add_options", "record", "recording"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """A size in bytes: ``500000``, ``64M``, ``1.5G`` (powers of 1024)."""
    found = _SIZE.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500000, 64M, 2G)")
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


def seconds(text: str) -> float:
    """A number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text!r}")
    return value


def add_options(cmd: argparse.ArgumentParser) -> None:
    """The options rotation, the disk cap and snapshots share between ``run`` and ``record``."""
    cmd.add_argument(
        "--snapshot", type=seconds, metavar="SECONDS", help="keep this many seconds in memory for incident files"
    )
    cmd.add_argument("--snapshot-dir", default=".", metavar="DIR", help="where incident files go (default: here)")
    cmd.add_argument("--rotate-bytes", type=size, metavar="SIZE", help="start a new file at this size (e.g. 100M)")
    cmd.add_argument("--rotate-seconds", type=seconds, metavar="SECONDS", help="start a new file this often")
    cmd.add_argument("--max-total", type=size, metavar="SIZE", help="delete the oldest files beyond this much disk")


def recording(args: argparse.Namespace, path: str | None) -> Recording | None:
    """The :class:`Recording` the options ask for (None: no option given)."""
    if path is None and not args.snapshot:
        if args.rotate_bytes or args.rotate_seconds or args.max_total:
            raise ConfigError("--rotate-bytes, --rotate-seconds and --max-total need --record or --snapshot")
        return None
    return Recording(
        path=path,
        snapshot=args.snapshot or 0.0,
        snapshot_dir=args.snapshot_dir,
        max_bytes=args.rotate_bytes,
        max_seconds=args.rotate_seconds,
        max_total=args.max_total,
    )


def record(args: argparse.Namespace) -> int:
    """``bussdcc record``: record a live runtime's messages and worker output until it ends (or Ctrl-C)."""
    for module in args.imports or ():
        try:
            importlib.import_module(module)  # registers the message classes it defines
        except Exception as exc:
            raise ConfigError(f"--import {module}: {exc!r}") from None
    options = recording(args, args.output)
    assert options is not None
    run_dir = _client.locate(args.name, args.run_dir)

    def report(error: str) -> None:
        print(f"bussdcc record: {error}", file=sys.stderr, flush=True)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    recorder = Recorder(options, library=f"bussdcc {__version__}", report=report)
    try:
        with _client.Client(run_dir) as client:
            for evt in client.events(0, True):
                if evt is None:
                    name = _client.runtime_name(run_dir)
                    print(f"bussdcc record: recording {name} to {args.output}", file=sys.stderr, flush=True)
                    continue
                if evt.dropped:
                    recorder.lost_upstream(evt.dropped)
                streamed(recorder, evt)
    except KeyboardInterrupt:
        pass
    finally:
        recorder.close()
        signal.signal(signal.SIGTERM, previous)
    lost = recorder.dropped + recorder.dropped_upstream
    print(f"bussdcc record: {recorder.total - lost} messages in {', '.join(map(str, recorder.files))} ({lost} lost)")
    return 0


def streamed(recorder: Recorder, evt: _client.Streamed) -> None:
    """Record one message of the control event stream."""
    dispatched, incarnation, seq = evt.origin
    try:
        env = p.decode(evt.item, p.ITEMS)
        if not isinstance(env, p.Envelope):
            return
        if env.name == m.WorkerOutput.name:
            out = p.decode_message(env.name, env.body)
            if isinstance(out, m.WorkerOutput):
                recorder.output(out.worker, out.stream, out.line, env.ts)
            return
        worker = env.source if incarnation else ""
        try:
            event = p.envelope_event(env)
        except ProtocolError:
            # A class this process does not know (see --import): its fields, as the runtime sent them.
            fields = msgspec.msgpack.decode(env.body)
            recorder.foreign(env.name, evt.severity, fields, env.ts, env.source, worker, incarnation, seq, dispatched)
            return
        recorder.message(event, incarnation, seq, dispatched)
    except (ProtocolError, msgspec.DecodeError, BussdccError):
        recorder.lost_upstream(1)

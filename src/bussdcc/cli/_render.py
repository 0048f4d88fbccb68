"""How the command line shows status and events."""

from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any

import psutil

from ..kernel import Severity
from ..kernel import protocol as p
from ._client import Streamed

_COLUMNS = ("name", "role", "state", "pid", "restarts", "uptime", "rss", "cpu", "last_exit")
_HEADERS = {"name": "WORKER", "last_exit": "LAST EXIT", "cpu": "CPU%"}
# Shown through other columns, or too long for a table (``--json`` has them all).
_HIDDEN = {"started_at", "cpu_percent"}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def measure(workers: list[dict[str, Any]]) -> None:
    """Fill in ``uptime``, ``rss`` and ``cpu`` for workers whose status lacks them (sampled here)."""
    procs: dict[int, psutil.Process] = {}
    for w in workers:
        pid = w.get("pid")
        if pid and ("rss" not in w or "cpu_percent" not in w):
            try:
                procs[pid] = psutil.Process(pid)
                procs[pid].cpu_percent(None)
            except psutil.Error:
                pass
    if procs:
        time.sleep(0.2)  # cpu percent is a rate: it needs two samples
    now = _dt.datetime.now(_dt.UTC)
    for w in workers:
        pid = w.get("pid")
        if "uptime" not in w and w.get("started_at") and pid:
            started = _dt.datetime.fromisoformat(w["started_at"].replace("Z", "+00:00"))
            w["uptime"] = (now - started).total_seconds()
        proc = procs.get(pid) if pid else None
        try:
            if proc is not None and "rss" not in w:
                w["rss"] = proc.memory_info().rss
            if proc is not None and "cpu_percent" not in w:
                w["cpu"] = proc.cpu_percent(None)
        except psutil.Error:
            pass
        if "cpu_percent" in w:
            w["cpu"] = w["cpu_percent"]


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "-"
    if key == "uptime" and isinstance(value, int | float):
        return _duration(value)
    if key == "rss" and isinstance(value, int | float):
        return _bytes(value)
    if key == "cpu" and isinstance(value, int | float):
        return f"{value:.1f}"
    return str(value)


def status_table(reply: p.StatusReply) -> str:
    """The runtime's line, then one row per worker; fields the table does not know come last."""
    rt = reply.runtime
    head = (
        f"{rt.get('name')}  pid {rt.get('pid')}  up {_duration(rt.get('uptime', 0))}  "
        f"dispatched {rt.get('dispatched')}  rejected {rt.get('rejected')}  lost {rt.get('lost')}  "
        f"events dropped {rt.get('events_dropped')}"
    )
    workers = [dict(w) for w in reply.workers]
    measure(workers)
    extra: list[str] = []
    for w in workers:
        extra += [k for k in w if k not in _COLUMNS and k not in _HIDDEN and k not in extra]
    columns = [*_COLUMNS, *extra]
    rows = [[_HEADERS.get(c, c.upper().replace("_", " ")) for c in columns]]
    rows += [[_cell(c, w.get(c)) for c in columns] for w in workers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    if not workers:
        lines.append("(no workers)")
    return "\n".join([head, "", *lines])


def event_record(evt: Streamed) -> dict[str, Any]:
    """A subscriber's event as plain data: time, name, severity, source, payload."""
    env = p.decode(evt.item, p.ITEMS)
    if not isinstance(env, p.Envelope):
        raise ValueError("not a message")
    try:
        severity = Severity(evt.severity).name
    except ValueError:
        severity = str(evt.severity)
    stamp = _dt.datetime.fromtimestamp(env.ts, tz=_dt.UTC).isoformat(timespec="milliseconds")
    return {
        "time": stamp.replace("+00:00", "Z"),
        "name": env.name,
        "severity": severity,
        "source": env.source,
        "payload": p.decode_value(env.body),
    }


def event_line(record: dict[str, Any]) -> str:
    """One readable line."""
    payload = json.dumps(record["payload"], separators=(", ", ": "), default=str)
    return f"{record['time']} {record['severity']:<8} {record['name']} [{record['source']}] {payload}"

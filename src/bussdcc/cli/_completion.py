"""Shell completion (``argcomplete``): sub-commands and options, runtime names, and live worker names.

Loaded only when the shell asks for completions (``_ARGCOMPLETE`` is set): the
command's import time is otherwise unchanged. A completer asks the live runtime
with a short timeout and, whatever goes wrong, offers nothing rather than an error.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..kernel import protocol as p
from ._client import Client, locate, running

#: Seconds a completer waits for the runtime: a TAB must not hang.
TIMEOUT = 1.0


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit (``argcomplete``'s protocol); return if it is not one."""
    try:
        import argcomplete
    except ImportError:
        return  # not installed (the `completion` extra): the command runs as usual
    argcomplete.autocomplete(parser, always_complete_options=False)  # options once "-" is typed


def runtime_names(prefix: str, **_: Any) -> list[str]:
    """The names of the runtimes running (for ``NAME`` and ``--runtime``)."""
    try:
        return sorted({info.name for info in running() if info.name.startswith(prefix)})
    except Exception:
        return []


def _workers(parsed_args: argparse.Namespace, role: str | None = None) -> list[str]:
    name = getattr(parsed_args, "runtime", None) or getattr(parsed_args, "name", None)
    run_dir = locate(name if isinstance(name, str) else None, getattr(parsed_args, "run_dir", None))
    with Client(run_dir) as client:
        reply = client.call(p.StatusRequest(client.secret), TIMEOUT)
    if not isinstance(reply, p.StatusReply):
        return []
    return [str(w["name"]) for w in reply.workers if role is None or w.get("role") == role]


def worker_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The live runtime's workers (Services and Devices) whose name starts with ``prefix``."""
    try:
        return [name for name in _workers(parsed_args) if name.startswith(prefix)]
    except Exception:
        return []


def device_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The live runtime's Devices whose id starts with ``prefix``."""
    try:
        return [name for name in _workers(parsed_args, "device") if name.startswith(prefix)]
    except Exception:
        return []


def completes(action: argparse.Action, completer: Any) -> None:
    """Give ``action`` its completer (``argcomplete`` reads the attribute)."""
    setattr(action, "completer", completer)  # noqa: B010  (argparse.Action declares no such attribute)

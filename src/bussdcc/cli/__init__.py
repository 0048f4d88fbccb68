# PYTHON_ARGCOMPLETE_OK
"""The ``bussdcc`` command: run a system, and inspect and steer a live runtime over its control endpoint."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import BussdccError
from ._parser import parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bussdcc`` command; return its exit code."""
    cli = parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (TAB)
        from ._completion import complete

        complete(cli)
    args = cli.parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except BussdccError as exc:
        print(f"bussdcc {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0

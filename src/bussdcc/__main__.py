# PYTHON_ARGCOMPLETE_OK
"""``python -m bussdcc``: the same as the ``bussdcc`` command."""

from .cli import main

raise SystemExit(main())

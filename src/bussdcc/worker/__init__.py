"""The child side of the process boundary: one worker process hosts one Service or Device.

The supervisor reaches :func:`bussdcc.worker._main.run` by name, at run time,
so that the two sides never import each other.
"""

__all__: list[str] = []

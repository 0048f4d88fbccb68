"""Thread-safe hierarchical coordination state addressed by dot paths."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from ..errors import StatePathError

__all__ = ["StateStore"]

_MISSING: Any = object()


def _split(path: str) -> list[str]:
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise StatePathError(f"invalid state path {path!r}: use non-empty dot-separated keys")
    return parts


class StateStore:
    """Hierarchical key/value state: ``set("a.b.c", 1)``, ``get("a.b")`` -> ``{"c": 1}``.

    A path may not pass through a leaf value, and a subtree is never silently
    replaced by a leaf (or the reverse): both raise :class:`StatePathError`.
    ``on_set(path, value)`` is called under the store's lock just before a
    write is committed, so writes reach it in the order they are applied; if
    it raises, the write does not happen; ``on_delete(path)`` likewise.
    """

    def __init__(
        self,
        on_set: Callable[[str, Any], None] | None = None,
        on_delete: Callable[[str], None] | None = None,
    ) -> None:
        self._root: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._on_set = on_set
        self._on_delete = on_delete

    def _parent(self, parts: list[str], path: str, create: bool) -> dict[str, Any] | None:
        node = self._root
        for i, key in enumerate(parts[:-1]):
            child = node.get(key, _MISSING)
            if child is _MISSING:
                if not create:
                    return None
                child = node[key] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise StatePathError(f"state path {path!r} crosses the leaf value at {where!r}")
            node = child
        return node

    def get(self, path: str, default: Any = None) -> Any:
        """Return the value (a copy, for subtrees) at ``path``, or ``default``."""
        parts = _split(path)
        with self._lock:
            try:
                parent = self._parent(parts, path, create=False)
            except StatePathError:
                return default
            if parent is None:
                return default
            value = parent.get(parts[-1], _MISSING)
            if value is _MISSING:
                return default
            return copy.deepcopy(value) if isinstance(value, dict) else value

    def set(self, path: str, value: Any) -> None:
        """Store ``value`` at ``path``, creating the subtrees on the way."""
        parts = _split(path)
        with self._lock:
            self._set_locked(parts, path, value)

    def _set_locked(self, parts: list[str], path: str, value: Any) -> None:
        parent = self._parent(parts, path, create=True)
        assert parent is not None
        current = parent.get(parts[-1], _MISSING)
        if isinstance(current, dict) and current and not isinstance(value, dict):
            raise StatePathError(f"state path {path!r} holds a subtree; delete it before setting a value")
        if self._on_set is not None:
            self._on_set(path, value)
        parent[parts[-1]] = copy.deepcopy(value) if isinstance(value, dict) else value

    def update(self, path: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Atomically replace the value at ``path`` with ``fn(current or default)``; return it."""
        parts = _split(path)
        with self._lock:
            parent = self._parent(parts, path, create=True)
            assert parent is not None
            value = fn(parent.get(parts[-1], default))
            self._set_locked(parts, path, value)
        return value

    def delete(self, path: str) -> bool:
        """Remove the value or subtree at ``path``; return whether anything was there."""
        parts = _split(path)
        with self._lock:
            parent = self._parent(parts, path, create=False)
            if parent is None or parts[-1] not in parent:
                return False
            if self._on_delete is not None:
                self._on_delete(path)
            del parent[parts[-1]]
            return True

    def snapshot(self) -> dict[str, Any]:
        """Return a deep copy of the whole tree."""
        with self._lock:
            return copy.deepcopy(self._root)

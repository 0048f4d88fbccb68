"""A worker's process settings: ``env``, ``cwd``, ``user``/``group``, and its dependencies' names.

Checked, and the user and group resolved to ids, in the parent when the worker is
registered (:func:`check_process`); applied in the worker's process just after
fork, before any of its code runs (:func:`apply_process`, in the fork server's child).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import RegistrationError
from ..kernel._layout import WORKERS_SOCKET

#: Where the resolved ids are kept on the component (so that the child does no NSS lookup).
_IDS_ATTR = "_bussdcc_ids"


@dataclass(frozen=True, slots=True)
class Ids:
    """Who the worker runs as: uid (None: unchanged), gid, supplementary groups, and the user's name and home."""

    uid: int | None
    gid: int
    groups: tuple[int, ...]
    user: str | None
    home: str | None


def names(component: object, attr: str) -> tuple[str, ...]:
    """The names in ``after`` or ``requires`` (checked by :func:`check_process`)."""
    value = getattr(component, attr, ())
    return tuple(value) if isinstance(value, list | tuple) else ()


def check_process(component: object) -> None:
    """Raise :class:`RegistrationError` naming the first bad process setting; resolve user/group to ids."""
    name = getattr(component, "name", "?")

    def bad(attr: str, rule: str) -> RegistrationError:
        return RegistrationError(f"{name!r}: {attr} must be {rule}, not {getattr(component, attr)!r}")

    for attr in ("after", "requires"):
        value = getattr(component, attr, ())
        if not isinstance(value, list | tuple) or not all(isinstance(n, str) and n for n in value):
            raise bad(attr, "a list of worker names")
        if name in value:
            raise RegistrationError(f"{name!r}: {attr} names the worker itself")
    env = getattr(component, "env", None)
    if env is not None:
        if not isinstance(env, dict):
            raise bad("env", "None or a table of strings")
        for key, val in env.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise RegistrationError(f"{name!r}: env has a bad variable name {key!r}")
            if not isinstance(val, str) or "\0" in val:
                raise RegistrationError(f"{name!r}: env {key} must be a string, not {val!r}")
    cwd = getattr(component, "cwd", None)
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise bad("cwd", "None or a directory path")
        if not os.path.isdir(cwd):
            raise RegistrationError(f"{name!r}: cwd {cwd!r} is not a directory")
    user, group = getattr(component, "user", None), getattr(component, "group", None)
    for attr, value in (("user", user), ("group", group)):
        if value is None or (isinstance(value, str) and value):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(attr, "None, a name or an id >= 0")
    if user is None and group is None:
        vars(component).pop(_IDS_ATTR, None)
        return
    if os.geteuid() != 0:
        which = "user" if user is not None else "group"
        raise RegistrationError(
            f"{name!r}: {which} needs a runtime running as root (this one runs as uid {os.geteuid()})"
        )
    vars(component)[_IDS_ATTR] = resolve(name, user, group)


def resolve(name: str, user: str | int | None, group: str | int | None) -> Ids:
    """The ids of ``user`` and ``group`` (by name or number); :class:`RegistrationError` if unknown."""
    uid: int | None = None
    home: str | None = None
    gid = os.getgid()
    if user is not None:
        try:
            pw = pwd.getpwuid(_number(user)) if _is_number(user) else pwd.getpwnam(str(user))
        except (KeyError, OverflowError, ValueError):  # ValueError: a NUL in the name
            raise RegistrationError(f"{name!r}: user {user!r} does not exist") from None
        uid, gid, home, user = pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_name
    if group is not None:
        try:
            gid = grp.getgrgid(_number(group)).gr_gid if _is_number(group) else grp.getgrnam(str(group)).gr_gid
        except (KeyError, OverflowError, ValueError):  # ValueError: a NUL in the name
            raise RegistrationError(f"{name!r}: group {group!r} does not exist") from None
    groups = tuple(os.getgrouplist(user, gid)) if user is not None else (gid,)
    return Ids(uid, gid, groups, user, home)


def _is_number(value: str | int) -> bool:
    """Whether ``value`` is a uid or gid: an int, or a name that is all digits (as ``chown`` reads it)."""
    return isinstance(value, int) or value.isdigit()


def _number(value: str | int) -> int:
    return value if isinstance(value, int) else int(value)


def drops(component: object) -> bool:
    """Whether the worker runs as another user or group than the runtime."""
    return getattr(component, "user", None) is not None or getattr(component, "group", None) is not None


def open_run_dir(run_dir: Path) -> None:
    """Let workers running as another user reach the workers' socket (root only; parent).

    The run directory (and its base) become searchable but not listable by others,
    and the workers' socket connectable: a connection still needs a live
    incarnation's routing id and token, which only that worker holds. The
    control socket and the secret stay the runtime's own.
    """
    for folder in run_dir.parent.resolve().parents:
        if not stat.S_IMODE(folder.stat().st_mode) & 0o001:
            raise PermissionError(
                f"{folder} is closed to other users, so a worker running as another user could not reach its socket "
                f"in {run_dir} (set BUSSDCC_RUN_BASE to a directory below an open one, e.g. /run/bussdcc)"
            )
    for folder in (run_dir.parent, run_dir):
        mode = stat.S_IMODE(folder.stat().st_mode)
        if mode & 0o011 != 0o011:
            folder.chmod(mode | 0o011)
    sock = run_dir / WORKERS_SOCKET
    if sock.exists():
        sock.chmod(0o666)


def apply_process(component: object) -> bool:  # pragma: no cover - runs in the worker, just after fork
    """Apply ``env``, ``user``/``group`` and ``cwd`` in this (worker) process; True if the ids changed."""
    env = getattr(component, "env", None)
    if env:
        os.environ.update(env)
    changed = False
    if drops(component):
        ids = vars(component).get(_IDS_ATTR)
        if not isinstance(ids, Ids):
            ids = resolve(str(getattr(component, "name", "?")), component.user, component.group)  # type: ignore[attr-defined]
        os.setgroups(list(ids.groups))
        os.setgid(ids.gid)
        if ids.uid is not None:
            os.setuid(ids.uid)
            for key, value in (("USER", ids.user), ("LOGNAME", ids.user), ("HOME", ids.home)):
                if value is not None and not (env and key in env):
                    os.environ[key] = value
        changed = True
    cwd = getattr(component, "cwd", None)
    if cwd is not None:
        os.chdir(cwd)  # as the worker's user: a directory it may not enter is its start failure
    return changed

"""Validation of supervision settings and groups, before anything starts (as OTP checks child specs)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import RegistrationError
from ..kernel import Device, Service, restart_policy

_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
#: Settings only a Service has (a Device never ticks, and runs whenever it is attached).
SERVICE_SETTINGS = frozenset(
    key for key, value in vars(Service).items() if not key.startswith("_") and not callable(value)
) - {"name"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_supervised(component: Service | Device) -> None:
    """Raise :class:`RegistrationError` naming the first bad supervision setting (a Service's on a Device too)."""
    name = component.name

    def bad(attr: str, rule: str) -> RegistrationError:
        return RegistrationError(f"{name!r}: {attr} must be {rule}, not {getattr(component, attr)!r}")

    if isinstance(component, Device):
        for attr in sorted(SERVICE_SETTINGS):
            # Set by mistake it would be ignored in silence: a Device that seems disabled still runs.
            if hasattr(component, attr):
                raise RegistrationError(f"{name!r}: {attr} is a Service setting; a Device has none")
    try:
        restart_policy(component)
    except ValueError as exc:
        raise RegistrationError(f"{name!r}: {exc}") from None
    for attr in (
        "start_timeout",
        "stop_timeout",
        "kill_timeout",
        "restart_window",
        "event_timeout",
        "heartbeat_timeout",
        "cpu_window",
    ):
        value = getattr(component, attr)
        if not _number(value) or value <= 0:
            raise bad(attr, "a positive number")
    for attr in ("backoff_initial", "backoff_max", "backoff_reset", "heartbeat_interval"):
        value = getattr(component, attr)
        if not _number(value) or value < 0:
            raise bad(attr, "a number >= 0")
    for attr in ("tick_timeout", "max_cpu"):
        value = getattr(component, attr)
        if value is not None and (not _number(value) or value <= 0):
            raise bad(attr, "None or a positive number")
    rss = component.max_rss
    if rss is not None and (not isinstance(rss, int) or isinstance(rss, bool) or rss <= 0):
        raise bad("max_rss", "None or a positive int (bytes)")
    restarts = component.max_restarts
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 0:
        raise bad("max_restarts", "an int >= 0")
    if component.heartbeat_interval > 0 and component.heartbeat_timeout <= component.heartbeat_interval:
        raise bad("heartbeat_timeout", f"longer than heartbeat_interval ({component.heartbeat_interval!r})")


def check_group(name: object, members: Sequence[object], strategy: object) -> None:
    """Raise :class:`RegistrationError` unless the group can start in the order given."""
    if not isinstance(name, str) or not name:
        raise RegistrationError(f"a group needs a non-empty string name, not {name!r}")
    if strategy not in _STRATEGIES:
        raise RegistrationError(f"group {name!r}: strategy must be one of {', '.join(_STRATEGIES)}, not {strategy!r}")
    if not members:
        raise RegistrationError(f"group {name!r} has no members")
    seen_service = None
    for member in members:
        if not isinstance(member, Service | Device):
            raise RegistrationError(f"group {name!r}: members are Services and Devices, not {type(member).__name__}")
        if isinstance(member, Service):
            seen_service = member.name
        elif seen_service is not None:
            # Boot starts every device before any service; a group must agree with that order.
            raise RegistrationError(
                f"group {name!r}: device {member.name!r} is listed after service {seen_service!r}; "
                "devices start before services, so list them first"
            )
        check_supervised(member)

"""Child specs: components built from ``module:Class`` targets, and their settings and groups checked
before anything starts (as OTP checks child specs). Runs on the caller's thread.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, RegistrationError
from ..kernel import Device, Process, Service
from ..kernel._components import Supervised, restart_policy
from ..kernel._message import message_names
from ._procenv import check_process

_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_ON_UNHEALTHY = ("restart", "report")
#: Settings only a Service has (a Device never ticks, and runs whenever it is attached).
SERVICE_SETTINGS = frozenset(
    key for key, value in vars(Service).items() if not key.startswith("_") and not callable(value)
) - {"name"}
#: Settings a TOML entry or ``--policy`` may give a Service or Device (class attributes).
POLICY_KEYS = frozenset(
    name
    for cls in (Supervised, Service)
    for name in vars(cls)
    if not name.startswith("_") and not callable(vars(cls)[name])
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
    if not isinstance(component.spare, bool):
        raise bad("spare", "true or false")
    restarts = component.max_restarts
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 0:
        raise bad("max_restarts", "an int >= 0")
    if component.heartbeat_interval > 0 and component.heartbeat_timeout <= component.heartbeat_interval:
        raise bad("heartbeat_timeout", f"longer than heartbeat_interval ({component.heartbeat_interval!r})")
    check_health(component)
    check_process(component)


def check_health(component: Service | Device) -> None:
    """Raise :class:`RegistrationError` naming the first bad ``expect``, ``health_*`` or ``on_unhealthy``."""
    name = component.name
    for attr in ("health_interval", "health_timeout"):
        value = getattr(component, attr)
        if not _number(value) or value <= 0:
            raise RegistrationError(f"{name!r}: {attr} must be a positive number, not {value!r}")
    if component.on_unhealthy not in _ON_UNHEALTHY:
        raise RegistrationError(
            f"{name!r}: on_unhealthy must be one of {', '.join(_ON_UNHEALTHY)}, not {component.on_unhealthy!r}"
        )
    expect = component.expect
    rule = f"{name!r}: expect must be a table of message name -> seconds (e.g. {{'plant.reading': 2.0}})"
    if not isinstance(expect, Mapping):
        raise RegistrationError(f"{rule}, not {expect!r}")
    known = message_names()
    for message, period in expect.items():
        if not isinstance(message, str) or message not in known:
            raise RegistrationError(f"{rule}: {message!r} is the name of no registered Message class")
        if not _number(period) or period <= 0:
            raise RegistrationError(f"{rule}: {period!r} for {message!r} is not a positive number")


def check_group(name: object, members: Sequence[object], strategy: object) -> None:
    """Raise :class:`RegistrationError` unless the group can start in the order given."""
    if not isinstance(name, str) or not name:
        raise RegistrationError(f"a group needs a non-empty string name, not {name!r}")
    if not name.isprintable():
        raise RegistrationError(f"a group name must have no control characters, not {name!r}")
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


def import_target(target: str) -> Any:
    """Import ``module:attribute`` (dots allowed in the attribute)."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{target!r} is not of the form module:attribute")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module!r}: {_one_line(str(exc))}") from exc
    except SystemExit as exc:  # a script's sys.exit() is no way to end the command that imports it
        raise ConfigError(f"cannot import {module!r}: importing it called sys.exit({exc.code!r})") from None
    except Exception as exc:  # its own bug (a SyntaxError, a RuntimeError): one line, not a traceback
        raise ConfigError(f"cannot import {module!r}: {type(exc).__name__}: {_one_line(str(exc))}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module!r} has no attribute {attr!r}") from None
    return obj


def _one_line(text: str) -> str:
    # An error is reported on one line, whatever the text an import raised with.
    return " ".join(text.split())


def build(target: str, name: str, config: Any = None, policy: Mapping[str, Any] | None = None) -> object:
    """Instantiate a component class named by ``target``.

    A Device is made as ``cls(id=name, config=config)``; any other component
    as ``cls(**config)`` (``config`` a table, or nothing), then named ``name``.
    ``policy`` sets supervision attributes (``restart``, ``max_restarts``, ...).
    """
    cls = import_target(target)
    if not isinstance(cls, type) or not issubclass(cls, Device | Service | Process):
        raise ConfigError(f"{target!r} is not a Device, Service, Process or Interface class")
    try:
        if issubclass(cls, Device):
            component: Any = cls(id=name, config=config)
        else:
            if config is not None and not isinstance(config, dict):
                raise ConfigError(f"config for {target!r} must be a table of constructor arguments")
            component = cls(**(config or {}))
            component.name = name
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot create {target!r}: {exc!r}") from exc
    for key, value in (policy or {}).items():
        if key not in POLICY_KEYS or not isinstance(component, Supervised):
            raise ConfigError(f"unknown setting {key!r} for {target!r}")
        if isinstance(component, Device) and key in SERVICE_SETTINGS:
            raise ConfigError(f"{key!r} is a Service setting: {target!r} is a Device, which has none")
        setattr(component, key, value)
    return component

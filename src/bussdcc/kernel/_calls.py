"""Calls to a Device's methods: which may be called, how they travel, and the typed handle.

Both sides use this module: the caller encodes the arguments and decodes the
result by the method's annotations; the device decodes the arguments the same
way. Where the call goes (straight to the hub in the parent, through the parent
from a worker) is the :class:`CallPort` of the side that makes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import threading
import typing
from collections.abc import Callable
from typing import Any, Concatenate, Final, Generic, NamedTuple, ParamSpec, Protocol, TypeAlias, TypeVar

import msgspec

from ..errors import (
    CallArgumentError,
    DeviceCallError,
    DeviceCrashed,
    DeviceError,
    DeviceTimeout,
    DeviceUnavailable,
    ProtocolError,
    UnknownDevice,
    UnknownMethod,
)
from . import protocol as p

__all__ = [
    "CallPort",
    "DeviceHandle",
    "Latch",
    "MethodSpec",
    "Outgoing",
    "callable_methods",
    "error_of",
    "fail",
    "failure_of",
    "method_spec",
]

#: The device class of a handle (bound to Device where a handle is made: ``Context.device``).
D = TypeVar("D")
P = ParamSpec("P")
R = TypeVar("R")

#: A call's deadline when the caller gives none.
DEFAULT_TIMEOUT: Final = 10.0
_VERDICT_GRACE: Final = 0.25
#: The longest deadline a call may have (a day).
MAX_TIMEOUT: Final = 86_400.0

#: Where Device and its bases are defined: their own methods are never callable. Named, not
#: imported, so that this module does not import the components (which import it).
_KERNEL_BASES: Final = f"{__name__.rpartition('.')[0]}._components"


def _is_base(klass: type) -> bool:
    return klass is object or klass.__module__ == _KERNEL_BASES


_raw_list: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])
_raw_map: Final = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
_methods: dict[type, dict[str, Callable[..., Any]]] = {}
_specs: dict[Callable[..., Any], MethodSpec] = {}
#: (device class, method) pairs a handle has checked: the method is callable on that class.
_checked: dict[tuple[type, Callable[..., Any]], MethodSpec] = {}


def callable_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """The public methods a Device subclass defines itself: nothing ``_private``, nothing of Device's own."""
    found = _methods.get(cls)
    if found is None:
        found = {}
        reserved = {name for klass in cls.__mro__ if _is_base(klass) for name in vars(klass)}
        for klass in reversed(cls.__mro__):
            if _is_base(klass):
                continue
            for name, member in vars(klass).items():
                if name.startswith("_") or name in reserved:
                    continue
                if inspect.isfunction(member):
                    found[name] = member
                else:
                    found.pop(name, None)  # a later class made it something else
        _methods[cls] = found
    return found


class MethodSpec:
    """How one method's arguments and result are encoded and decoded (built once per method)."""

    __slots__ = ("_keywords", "_positional", "_result", "_var_keyword", "_var_positional", "name")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.name: str = fn.__name__
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}  # annotations that do not resolve here: the values travel as plain data
        params = list(inspect.signature(fn).parameters.values())[1:]  # not self

        def decoder(name: str) -> msgspec.msgpack.Decoder[Any]:
            try:
                return p.value_decoder(hints.get(name, Any))
            except TypeError:  # a type msgspec cannot decode into: take the plain data
                return p.value_decoder(Any)

        kinds = inspect.Parameter
        by_position = (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        by_name = (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        self._positional = [decoder(x.name) for x in params if x.kind in by_position]
        self._keywords = {x.name: decoder(x.name) for x in params if x.kind in by_name}
        star = [x for x in params if x.kind is kinds.VAR_POSITIONAL]
        self._var_positional = decoder(star[0].name) if star else p.value_decoder(Any)
        stars = [x for x in params if x.kind is kinds.VAR_KEYWORD]
        self._var_keyword = decoder(stars[0].name) if stars else p.value_decoder(Any)
        self._result = decoder("return")

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, bytes]:
        """Encode the arguments, or raise :class:`CallArgumentError` before anything is sent."""
        try:
            a, k = p.encode(args), p.encode(kwargs)
        except ProtocolError as exc:
            raise CallArgumentError(f"cannot send the arguments of {self.name}(): {exc}", method=self.name) from None
        if len(a) + len(k) > p.MAX_ITEM:
            raise CallArgumentError(
                f"the arguments of {self.name}() encode to {len(a) + len(k)} bytes, over the {p.MAX_ITEM}-byte limit",
                method=self.name,
            )
        return a, k

    def decode_args(self, args: bytes | memoryview, kwargs: bytes | memoryview) -> tuple[list[Any], dict[str, Any]]:
        """Decode the arguments into the types the method declares (raises ``msgspec`` errors)."""
        raws = _raw_list.decode(args)
        values = [
            (self._positional[i] if i < len(self._positional) else self._var_positional).decode(raw)
            for i, raw in enumerate(raws)
        ]
        named = {k: self._keywords.get(k, self._var_keyword).decode(raw) for k, raw in _raw_map.decode(kwargs).items()}
        return values, named

    def decode_result(self, raw: bytes | memoryview) -> Any:
        """Decode a result into the type the method declares."""
        return self._result.decode(raw)


def method_spec(fn: Callable[..., Any]) -> MethodSpec:
    """The (cached) :class:`MethodSpec` of ``fn``."""
    spec = _specs.get(fn)
    if spec is None:
        spec = _specs[fn] = MethodSpec(fn)
    return spec


# ---- failures on the wire ----------------------------------------------------------------

_KINDS: Final[dict[p.FailureKind, type[DeviceCallError]]] = {
    "error": DeviceError,
    "timeout": DeviceTimeout,
    "crashed": DeviceCrashed,
    "unavailable": DeviceUnavailable,
    "unknown_device": UnknownDevice,
    "unknown_method": UnknownMethod,
    "argument": CallArgumentError,
}
_NAMES: Final = {cls: kind for kind, cls in _KINDS.items()}


def failure_of(exc: DeviceCallError) -> p.Failure:
    """The wire form of a call error."""
    kind = _NAMES.get(type(exc), "error")
    if isinstance(exc, DeviceError):
        return p.Failure(kind, str(exc), exc.remote_type, exc.remote_message, exc.remote_traceback)
    detail = getattr(exc, "reason", "") or getattr(exc, "state", "")
    return p.Failure(kind, str(exc), detail=detail, available=tuple(getattr(exc, "available", ())))


def error_of(failure: p.Failure, device: str, method: str) -> DeviceCallError:
    """The exception a wire failure stands for."""
    cls = _KINDS.get(failure.kind, DeviceCallError)
    if cls is DeviceError:
        return DeviceError(
            failure.message,
            device=device,
            method=method,
            remote_type=failure.remote_type,
            remote_message=failure.remote_message,
            remote_traceback=failure.traceback,
        )
    if cls is DeviceCrashed:
        return DeviceCrashed(failure.message, device=device, method=method, reason=failure.detail)
    if cls is DeviceUnavailable:
        return DeviceUnavailable(failure.message, device=device, method=method, state=failure.detail)
    if cls is UnknownDevice:
        return UnknownDevice(failure.message, device=device, method=method, available=failure.available)
    if cls is UnknownMethod:
        return UnknownMethod(failure.message, device=device, method=method, available=failure.available)
    return cls(failure.message, device=device, method=method)


def fail(call_id: int, exc: DeviceCallError) -> p.Reply:
    """A reply that carries ``exc``."""
    return p.Reply(call_id, p.NIL, failure_of(exc))


# ---- the caller's side ----------------------------------------------------------------------


class Latch:
    """Where one call's reply lands; set once, from any thread."""

    __slots__ = ("_guard", "_lock", "reply")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        #: Makes "is there a reply yet? then this one" one step: a reply and a timeout can race.
        self._guard = threading.Lock()
        self.reply: p.Reply | None = None

    def set(self, reply: p.Reply) -> None:
        """Deliver the reply (a second one is ignored)."""
        with self._guard:
            if self.reply is not None:
                return
            self.reply = reply
        self._lock.release()  # once only: only the first caller gets past the guard

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the reply."""
        if self.reply is not None:
            return True
        if self._lock.acquire(timeout=max(0.0, timeout)):
            self._lock.release()
        return self.reply is not None


class Outgoing(NamedTuple):
    """One call on its way: which device and method, the encoded arguments, the deadline, whether to wait.

    A named tuple: it is made for every call, and a frozen dataclass costs several times as much to build.
    """

    device: str
    method: str
    args: bytes
    kwargs: bytes
    timeout: float
    wait: bool


#: A port's optional ``roundtrip(call)``: make the call on the calling thread if it can, returning
#: ``(True, its reply, or None at the deadline)``, else ``(False, None)`` (then it goes by ``submit``).
Direct: TypeAlias = Callable[[Outgoing], tuple[bool, "p.Reply | None"]]

#: The ZAP domain of a device's own call endpoint, and the PLAIN username its callers give
#: (the password is the device incarnation's secret).
CALLS_DOMAIN: Final = b"bussdcc-calls"
CALLS_USER: Final = b"bussdcc-parent"


_replies: Final = msgspec.msgpack.Decoder(p.Reply)


def unpack_reply(data: bytes) -> tuple[p.Reply, int] | None:
    """A direct reply: the encoded :class:`~bussdcc.kernel.protocol.Reply`, then the items sent before it (8 bytes)."""
    try:
        return p.decode(data[:-8], _replies), int.from_bytes(data[-8:], "little")
    except ProtocolError:
        return None  # the device is ours, so this is a bug: the caller gets no answer, and times out


def call_endpoint(workers: str, slot: int, incarnation: int) -> str:
    """Where a device incarnation binds its call endpoint: next to the workers' ``ipc://`` socket."""
    folder = workers.removeprefix("ipc://").rpartition("/")[0]
    return f"ipc://{folder}/c{slot}.{incarnation}"


def call_key(token: bytes) -> bytes:
    """The password of a device incarnation's call endpoint: derived from its secret, which it does not reveal."""
    return hmac.new(token, b"bussdcc-calls", hashlib.sha256).digest()


class CallPort(Protocol):
    """Where a side sends its calls (the parent's hub, or a worker's channel)."""

    def check(self, cls: type[Any], device: str) -> None:
        """Raise :class:`UnknownDevice` if ``device`` is known not to be a ``cls`` (where that is known)."""
        ...

    def submit(self, call: Outgoing, done: Callable[[p.Reply], None]) -> int:
        """Send a call; ``done`` gets its reply (on any thread, exactly once unless cancelled); return its id."""
        ...

    def cancel(self, call_id: int) -> None:
        """Forget a call: a reply that arrives later is dropped."""
        ...

    def block(self, latch: Latch, timeout: float) -> bool:
        """Wait for ``latch`` up to ``timeout`` seconds, doing whatever this thread must do meanwhile."""
        ...

    @property
    def async_direct(self) -> bool:
        """Whether replies arrive without the waiting thread's help (so ``acall`` needs no thread)."""
        ...


class DeviceHandle(Generic[D]):
    """A typed handle to one device, usable from any thread: ``handle.call(Motor.move, 12.5, speed=2.0)``.

    The deadline and whether to wait for a device that is not ready are the
    handle's (``rt.device(Motor, "axis-1", timeout=1.0, wait=True)``, or
    ``handle.options(timeout=...)`` for a copy with other settings).
    """

    __slots__ = ("_port", "cls", "id", "timeout", "wait")

    def __init__(
        self, cls: type[D], id: str, port: CallPort, *, timeout: float = DEFAULT_TIMEOUT, wait: bool = False
    ) -> None:
        if not (0 < timeout <= MAX_TIMEOUT):
            raise ValueError(f"timeout must be > 0 and at most {MAX_TIMEOUT:g} seconds, not {timeout!r}")
        self.cls = cls
        self.id = id
        self._port = port
        self.timeout = float(timeout)
        self.wait = wait

    def __repr__(self) -> str:
        return f"DeviceHandle({self.cls.__name__}, {self.id!r}, timeout={self.timeout}, wait={self.wait})"

    def options(self, *, timeout: float | None = None, wait: bool | None = None) -> DeviceHandle[D]:
        """A copy of this handle with another deadline (seconds) or ``wait`` setting."""
        return DeviceHandle(
            self.cls,
            self.id,
            self._port,
            timeout=self.timeout if timeout is None else timeout,
            wait=self.wait if wait is None else wait,
        )

    def _spec(self, method: Callable[..., Any]) -> MethodSpec:
        found = _checked.get((self.cls, method))
        if found is not None:
            return found
        name = getattr(method, "__name__", None) or repr(method)
        allowed = callable_methods(self.cls)
        if allowed.get(name) is not method:
            raise UnknownMethod(
                f"{self.cls.__name__} has no callable method {name!r}; it has {sorted(allowed)}",
                device=self.id,
                method=name,
                available=tuple(sorted(allowed)),
            )
        spec = _checked[self.cls, method] = method_spec(method)
        return spec

    def _result(self, spec: MethodSpec, reply: p.Reply) -> Any:
        if reply.failure is not None:
            raise error_of(reply.failure, self.id, spec.name)
        try:
            return spec.decode_result(reply.result)
        except (msgspec.DecodeError, ValueError) as exc:
            raise CallArgumentError(f"{self.id}.{spec.name}() returned what cannot be decoded: {exc}") from None

    def _timed_out(self, spec: MethodSpec) -> DeviceTimeout:
        return DeviceTimeout(
            f"{self.id}.{spec.name}() did not answer within {self.timeout}s", device=self.id, method=spec.name
        )

    def _verdict(self, latch: Latch) -> bool:
        # A call that waited for the device expires in the router at the same
        # deadline, saying why (never ready): give that verdict a moment to land.
        if not self.wait:
            return False
        self._port.block(latch, _VERDICT_GRACE)
        return latch.reply is not None and latch.reply.failure is not None

    def call(self, method: Callable[Concatenate[D, P], R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``method(*args, **kwargs)`` in the device's process and return its result."""
        spec = self._spec(method)
        a, k = spec.encode_args(args, kwargs)
        out = Outgoing(self.id, spec.name, a, k, self.timeout, self.wait)
        direct: Direct | None = getattr(self._port, "roundtrip", None)
        if direct is not None:
            done, reply = direct(out)
            if done:  # made on this thread, straight to the device
                if reply is None:
                    raise self._timed_out(spec)
                result_: R = self._result(spec, reply)
                return result_
        latch = Latch()
        call_id = self._port.submit(out, latch.set)
        if not self._port.block(latch, self.timeout) and not self._verdict(latch):
            self._port.cancel(call_id)
            raise self._timed_out(spec)
        assert latch.reply is not None
        result: R = self._result(spec, latch.reply)
        return result

    async def acall(self, method: Callable[Concatenate[D, P], R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """The same as :meth:`call`, awaited from asyncio."""
        spec = self._spec(method)
        if not self._port.async_direct:
            return await asyncio.to_thread(self.call, method, *args, **kwargs)
        a, k = spec.encode_args(args, kwargs)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[p.Reply] = loop.create_future()

        def settle(reply: p.Reply) -> None:
            if not fut.done():
                fut.set_result(reply)

        def done(reply: p.Reply) -> None:
            try:
                loop.call_soon_threadsafe(settle, reply)
            except RuntimeError:
                pass  # the loop closed: nobody is waiting any more

        call_id = self._port.submit(Outgoing(self.id, spec.name, a, k, self.timeout, self.wait), done)
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            if self.wait:
                try:
                    reply = await asyncio.wait_for(fut, _VERDICT_GRACE)
                except TimeoutError:
                    pass
                else:
                    if reply.failure is not None:
                        return self._result(spec, reply)  # type: ignore[no-any-return]
            self._port.cancel(call_id)
            raise self._timed_out(spec) from None
        except asyncio.CancelledError:
            self._port.cancel(call_id)
            raise
        result: R = self._result(spec, reply)
        return result

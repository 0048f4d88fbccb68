"""The HTTP endpoint (opt-in): Prometheus metrics, a live status page, JSON and actions.

Served by the standard library's threading HTTP server on a ``bussdcc-http``
thread, one thread per connection, bounded in number. ``GET /metrics`` is the
Prometheus exposition (``_metrics``); ``GET /`` the status page, kept live by
server-sent events (``GET /api/stream``); ``GET /api/status`` and
``GET /api/events`` the same as JSON. ``POST /api/workers/NAME/ACTION`` (restart,
stop, start) needs the run directory's secret, in hex, as a bearer token: the
page takes it from the login URL the runtime prints; without it the page is
read-only.

The event stream is fed by the control server's tap, in dispatch order, under
the dispatch lock: :meth:`HttpServer.tap` only appends to bounded queues and
never blocks. A stream client whose queue outgrows its byte bound is dropped
(its browser reconnects), never waited for.
"""

from __future__ import annotations

import fnmatch
import hmac
import io
import json
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from ..errors import BootError, BussdccError, ConfigError, UnknownWorker
from ..kernel import Severity
from ..kernel import protocol as p
from ._managed import ManagedRuntime
from ._metrics import Exposition
from ._workers import WorkerState, WorkerStatus

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher
    from ._supervisor import Supervisor

__all__ = ["HttpServer", "parse_listen"]

#: Connections served at once (each is a thread); more are closed at once.
_MAX_CONNECTIONS = 64
#: Event-stream clients at once, and the bytes queued for one before it is dropped as too slow.
_MAX_STREAMS = 16
_STREAM_BYTES = 4 * 1024 * 1024
#: Messages kept for a new page or ``/api/events``, and their bound in bytes.
_RECENT = p.RECENT
_RECENT_BYTES = 8 * 1024 * 1024
#: Actions (restart, stop, start) running at once; each waits on its worker.
_MAX_ACTIONS = 16
#: Seconds a connection may be silent (reading a request, or a client not reading the stream).
_SOCKET_TIMEOUT = 10.0
#: Seconds a request (its line, headers and body) may take to arrive, however it trickles in:
#: connections that send a byte now and then would otherwise hold every slot for good.
_REQUEST_DEADLINE = 30.0
#: How often the stream sends the worker table and counters.
_STATUS_EVERY = 1.0
_MAX_BODY = 64 * 1024
_ACTIONS = {"restart": "restart_worker", "stop": "stop_worker", "start": "start_worker"}
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``, on 127.0.0.1; ``[::1]:PORT`` for IPv6) as (host, port); ``ConfigError`` if not."""
    if not isinstance(text, str):
        raise ConfigError(f"http: expected 'HOST:PORT' (a string), not {type(text).__name__}")
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text.strip()
    host = host.strip()
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 <= number <= 65535 or (":" in host and not bracketed):
        raise ConfigError(f"http: {text!r} is not HOST:PORT (for example 127.0.0.1:9100)")
    return host, number


def event_record(severity: int, item: bytes) -> dict[str, Any] | None:
    """A tapped message as plain data (as ``bussdcc events --json`` prints it); None if it is not one."""
    try:
        env = p.decode(item, p.ITEMS)
        if not isinstance(env, p.Envelope):
            return None
        payload = p.decode_value(env.body)
    except Exception:
        return None
    try:
        level = Severity(severity).name
    except ValueError:
        level = str(severity)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(env.ts)) + f".{int(env.ts % 1 * 1000):03d}Z"
    return {"time": stamp, "name": env.name, "severity": level, "source": env.source, "payload": payload}


def _status_builtins(ws: WorkerStatus) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(ws)
    data["state"] = str(ws.state)
    return data


class _Filter:
    """The filters of ``bussdcc events``: lowest severity, a glob on the message name, how many recent ones."""

    def __init__(self, query: dict[str, list[str]]) -> None:
        level = (query.get("severity") or ["DEBUG"])[0].upper() or "DEBUG"
        if level not in Severity.__members__:
            raise ValueError(f"severity must be one of {', '.join(Severity.__members__)}")
        self.minimum = int(Severity[level])
        self.pattern = (query.get("name") or [""])[0]
        n = (query.get("n") or ["100"])[0]
        try:  # n=0: none, as `bussdcc events -n 0`; n=all: every one kept
            self.lines = _RECENT if n.strip().lower() == "all" else max(0, min(_RECENT, int(n)))
        except ValueError:
            raise ValueError("n must be a whole number or 'all'") from None

    def match(self, severity: int, record: dict[str, Any]) -> bool:
        return severity >= self.minimum and (not self.pattern or fnmatch.fnmatchcase(record["name"], self.pattern))


class _Stream:
    """One event-stream client's queue (filled by the tap, emptied by its connection's thread)."""

    __slots__ = ("dropped", "minimum", "queue", "size")

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self.queue: deque[tuple[int, bytes]] = deque()
        self.size = 0
        self.dropped = False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: HttpServer

    def __init__(self, address: tuple[str, int], app: HttpServer) -> None:
        self.app = app
        self._active = 0
        self._active_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            full = self._active >= _MAX_CONNECTIONS
            if not full:
                self._active += 1
        if full:
            self.shutdown_request(request)  # strangers cannot hold threads for free
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._active_lock:
                self._active -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer is no error of the runtime's


class HttpServer:
    """Serves one runtime's metrics, status page, JSON and actions on ``listen``."""

    def __init__(
        self, runtime: ManagedRuntime, supervisor: Supervisor, dispatcher: Dispatcher, listen: str, secret: bytes
    ) -> None:
        self.runtime = runtime
        self.host, self.port = parse_listen(listen)
        self.token = secret.hex()
        self.exposition = Exposition(runtime, supervisor, dispatcher)
        self._cond = threading.Condition()
        self._recent: deque[tuple[int, bytes]] = deque()
        self._recent_bytes = 0
        self._streams: set[_Stream] = set()
        self._closed = False
        self._actions = threading.BoundedSemaphore(_MAX_ACTIONS)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        #: Stream clients dropped because they did not keep up.
        self.dropped_clients = 0

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve from the ``bussdcc-http`` thread (``BootError`` if the address cannot be bound)."""
        try:
            httpd = _Server((self.host, self.port), self)
        except OSError as exc:
            raise BootError(f"cannot serve HTTP on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.25}, name="bussdcc-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (idempotent); stream clients are told to go."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    @property
    def address(self) -> tuple[str, int]:
        """Where it serves (the port chosen, if 0 was asked for)."""
        return self.host, self.port

    @property
    def login_url(self) -> str:
        """The page's URL with the token that allows acting on workers."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    def authorized(self, token: str | None) -> bool:
        """Whether ``token`` is the runtime's (constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    # ---- the event stream -----------------------------------------------------------

    def tap(self, severity: int, item: bytes) -> None:
        """Keep a dispatched message and queue it for stream clients (dispatch order; never blocks)."""
        size = len(item) + 64
        with self._cond:
            self._recent.append((severity, item))
            self._recent_bytes += size
            while len(self._recent) > _RECENT or (self._recent_bytes > _RECENT_BYTES and len(self._recent) > 1):
                self._recent_bytes -= len(self._recent.popleft()[1]) + 64
            if not self._streams:
                return
            for stream in self._streams:
                if severity < stream.minimum or stream.dropped:
                    continue
                if stream.size + size > _STREAM_BYTES:
                    stream.dropped = True  # too slow: its thread closes it; the browser reconnects
                    stream.queue.clear()
                    stream.size = 0
                    self.dropped_clients += 1
                    continue
                stream.queue.append((severity, item))
                stream.size += size
            self._cond.notify_all()

    def recent(self) -> list[tuple[int, bytes]]:
        """The messages kept, oldest first."""
        with self._cond:
            return list(self._recent)

    def subscribe(self, minimum: int) -> tuple[_Stream, list[tuple[int, bytes]]] | None:
        """A new stream and the messages before it (none missed, none twice); None if too many stream."""
        with self._cond:
            if len(self._streams) >= _MAX_STREAMS or self._closed:
                return None
            stream = _Stream(minimum)
            self._streams.add(stream)
            return stream, list(self._recent)

    def unsubscribe(self, stream: _Stream) -> None:
        with self._cond:
            self._streams.discard(stream)

    def next_batch(self, stream: _Stream, timeout: float) -> tuple[list[tuple[int, bytes]], bool]:
        """What was queued for ``stream`` (waiting up to ``timeout``), and whether it must end."""
        with self._cond:
            if not stream.queue and not stream.dropped and not self._closed:
                self._cond.wait(timeout)
            batch = list(stream.queue)
            stream.queue.clear()
            stream.size = 0
            return batch, stream.dropped or self._closed

    # ---- answers --------------------------------------------------------------------

    def status(self, can_act: bool) -> dict[str, Any]:
        """The runtime, its counters and its workers as plain data."""
        rt = self.runtime
        return {
            "name": rt.name,
            "version": rt.version,
            "pid": os.getpid(),
            "booted": rt.booted,
            "time": time.time(),
            "stats": msgspec.to_builtins(rt.stats()),
            "workers": [_status_builtins(ws) for ws in rt.workers()],
            "states": [s.value for s in WorkerState],
            "can_act": can_act,
            "stream_clients_dropped": self.dropped_clients,
        }

    def act(self, name: str, action: str) -> tuple[int, dict[str, Any]]:
        """Run ``action`` on the worker ``name``: (HTTP status, answer)."""
        method = _ACTIONS.get(action)
        if method is None:
            return 404, {"error": f"no action {action!r}; actions: {', '.join(_ACTIONS)}"}
        if not self._actions.acquire(blocking=False):
            return 503, {"error": f"busy: {_MAX_ACTIONS} actions are in progress already; try again later"}
        try:
            fn: Callable[[str], WorkerStatus] = getattr(self.runtime, method)
            status = fn(name)
        except UnknownWorker as exc:
            return 404, {"error": str(exc)}
        except BussdccError as exc:
            return 409, {"error": str(exc)}
        except Exception as exc:
            return 500, {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            self._actions.release()
        return 200, {"worker": _status_builtins(status)}


class _DeadlineReader(io.RawIOBase):
    """A connection's input that must arrive by a deadline (``TimeoutError`` after it; the handler closes)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._end = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(min(_SOCKET_TIMEOUT, left))
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(_SOCKET_TIMEOUT)  # what is written back has the usual time


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _SOCKET_TIMEOUT
    server_version = "bussdcc"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        plain, self.rfile = self.rfile, io.BufferedReader(_DeadlineReader(self.connection, _REQUEST_DEADLINE))
        plain.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not the runtime's output

    # ---- plumbing ---------------------------------------------------------------------

    def _send(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, _dumps(data).encode(), "application/json")

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        return self.headers.get("X-Bussdcc-Token")

    # ---- routes -----------------------------------------------------------------------

    def _stranger(self) -> bool:
        """Refuse a request for another host name on a loopback address (a DNS-rebinding web page's)."""
        app = self.server.app
        if app.host not in _LOOPBACK:
            return False
        host = (self.headers.get("Host") or "").strip().lower()
        name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
        if name in _LOOPBACK or name == "localhost":
            return False
        self._json(421, {"error": f"this endpoint serves 127.0.0.1 and localhost, not {host!r}"})
        return True

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self._stranger():
            return
        app = self.server.app
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        if path in ("/", "/index.html"):
            from ._page import PAGE

            csp = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
            self._send(200, PAGE.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": csp})
        elif path == "/metrics":
            try:
                body = app.exposition.render()
            except RuntimeError as exc:
                self._send(501, f"{exc}\n".encode(), "text/plain; charset=utf-8")
                return
            self._send(200, body, app.exposition.content_type)
        elif path == "/api/status":
            self._json(200, app.status(app.authorized(self._token())))
        elif path == "/api/events":
            try:
                filt = _Filter(query)
            except ValueError as exc:
                self._json(400, {"error": str(exc)})
                return
            records = [r for sev, item in app.recent() if (r := event_record(sev, item)) and filt.match(sev, r)]
            self._json(200, {"events": records[-filt.lines :] if filt.lines else []})
        elif path == "/api/stream":
            self._stream(query)
        else:
            self._json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:
        if self._stranger():
            return
        app = self.server.app
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._json(413, {"error": "the request body is too large"})
            return
        if length:
            self.rfile.read(length)
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["api", "workers"]:
            self._json(404, {"error": f"no such action: {self.path}"})
            return
        if not app.authorized(self._token()):
            self._json(403, {"error": "a valid token is needed to act (see the URL the runtime printed at start)"})
            return
        code, answer = app.act(unquote(parts[2]), parts[3])
        self._json(code, answer)

    def _stream(self, query: dict[str, list[str]]) -> None:
        app = self.server.app
        try:
            filt = _Filter(query)
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        if self.command == "HEAD":  # the headers a GET would get, and no stream (nor a stream's slot)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.close_connection = True
            return
        found = app.subscribe(filt.minimum)
        if found is None:
            self._json(503, {"error": f"too many event streams ({_MAX_STREAMS}) are open"})
            return
        stream, backlog = found
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            out = self.wfile
            out.write(b"retry: 2000\n\n")
            records = [r for sev, item in backlog if (r := event_record(sev, item)) and filt.match(sev, r)]
            for record in records[-filt.lines :] if filt.lines else []:
                out.write(_sse("message", record))
            out.write(_sse("status", app.status(False)))
            out.flush()
            last = time.monotonic()
            while True:
                batch, done = app.next_batch(stream, _STATUS_EVERY)
                if done:
                    if stream.dropped:
                        out.write(_sse("dropped", {"reason": "this reader was too slow"}))
                    break
                for sev, item in batch:
                    live = event_record(sev, item)
                    if live is not None and filt.match(sev, live):
                        out.write(_sse("message", live))
                if time.monotonic() - last >= _STATUS_EVERY:
                    out.write(_sse("status", app.status(False)))
                    last = time.monotonic()
                out.flush()
        except OSError:
            pass  # the client went away, or stopped reading for _SOCKET_TIMEOUT
        finally:
            app.unsubscribe(stream)
            self.close_connection = True


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity made None (``null``): no JSON parser reads them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _dumps(data: Any) -> str:
    """``data`` as JSON that a browser's ``JSON.parse`` accepts (a reading may be NaN; JSON has none)."""
    try:
        return json.dumps(data, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), default=str, allow_nan=False)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()

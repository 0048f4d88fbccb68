"""Talking HTTP to a runtime's endpoint, and the outside tools the HTTP tests use."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.error
import urllib.request
from typing import Any

from bussdcc import Runtime


def base(rt: Runtime) -> str:
    """``http://host:port`` of a runtime's endpoint."""
    address = rt.http_address
    assert address is not None, "the runtime serves no HTTP"
    return f"http://{address[0]}:{address[1]}"


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 20.0) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = get(url, headers)
    assert status == 200, (status, body)
    return json.loads(body)


def post(url: str, token: str | None = None, timeout: float = 60.0) -> tuple[int, Any]:
    """(status, JSON answer) of a POST, with the token as a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def token_of(rt: Runtime) -> str:
    url = rt.http_url
    assert url is not None
    return url.rsplit("token=", 1)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tool(name: str) -> str | None:
    """The path of an outside tool, or None."""
    return shutil.which(name) or (f"/usr/bin/{name}" if shutil.which(f"/usr/bin/{name}") else None)

"""The HTTP endpoint's metrics and JSON: real runtimes, real sockets, the real promtool."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bussdcc import Runtime, WorkerState
from bussdcc.errors import BootError, ConfigError
from bussdcc.supervisor._metrics import metric_names

from ._cli import Background
from ._helpers import Echo, MakeRuntime, missing_tool, wait_until
from ._web import base, free_port, get, get_json, tool
from .cli_parts import Probe


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape(rt: Runtime) -> str:
    status, ctype, body = get(base(rt) + "/metrics")
    assert status == 200, body
    assert ctype.startswith("text/plain"), ctype
    return body.decode()


def _respawned(rt: Runtime, name: str) -> None:
    """Kill the worker ``name`` and wait until its next incarnation is running."""
    before = rt.worker(name)
    assert before.pid is not None
    os.kill(before.pid, signal.SIGKILL)
    wait_until(
        lambda: (w := rt.worker(name)).state is WorkerState.RUNNING and w.incarnation > before.incarnation,
        timeout=30,
        what=f"{name} to come back",
    )


def test_metrics_read_the_runtime_at_scrape_time(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("metrics", Probe(id="probe"), Echo(), http="127.0.0.1:0")
    probe = rt.device(Probe, "probe")
    for channel in range(3):
        probe.call(Probe.read, channel)
    _respawned(rt, "echo")
    got = samples(scrape(rt))
    families = {f.name for f in text_string_to_metric_families(scrape(rt))}
    for name in metric_names():
        # The parser names counters without their _total suffix.
        assert name.removesuffix("_total") in families, name
    assert got["bussdcc_worker_up", (("role", "device"), ("worker", "probe"))] == 1
    assert got["bussdcc_worker_restarts_total", (("role", "service"), ("worker", "echo"))] == 1
    assert got["bussdcc_worker_restarts_total", (("role", "device"), ("worker", "probe"))] == 0
    # One series per state the lifecycle has, whatever they are: 1 for the one it is in.
    for state in WorkerState:
        value = got["bussdcc_worker_state", (("role", "service"), ("state", state.value), ("worker", "echo"))]
        assert value == (1 if state is WorkerState.RUNNING else 0)
    assert got["bussdcc_workers", (("state", "running"),)] == 2
    assert got["bussdcc_respawn_latency_seconds_count", ()] == 1
    assert got["bussdcc_respawn_latency_seconds_bucket", (("le", "+Inf"),)] == 1
    assert got["bussdcc_device_call_duration_seconds_count", (("device", "probe"),)] == 3
    assert got["bussdcc_messages_dispatched_total", ()] >= 1
    assert got["bussdcc_messages_dispatched_total", ()] <= rt.stats().dispatched
    assert got["bussdcc_worker_incarnation", (("role", "service"), ("worker", "echo"))] == 2
    # A restart asked for is no respawn: the histogram times only deaths the policy recovers from.
    rt.restart_worker("echo")
    assert samples(scrape(rt))["bussdcc_respawn_latency_seconds_count", ()] == 1
    # Sampled by the watchdog: present once it has looked at the workers.
    wait_until(lambda: ("bussdcc_worker_rss_bytes", (("role", "device"), ("worker", "probe"))) in samples(scrape(rt)))


def test_a_removed_worker_leaves_no_series_behind(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("metrics-rm", Probe(id="probe"), Echo(), http="127.0.0.1:0")
    rt.device(Probe, "probe").call(Probe.read, 1)
    assert 'worker="echo"' in scrape(rt)
    rt.remove_worker("echo")
    rt.remove_worker("probe")
    text = scrape(rt)
    assert 'worker="echo"' not in text and 'device="probe"' not in text and 'worker="probe"' not in text


def test_promtool_accepts_the_exposition(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        missing_tool("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    rt, _ = make_runtime("promtool", Probe(id="probe"), Echo(), http="127.0.0.1:0")
    rt.device(Probe, "probe").call(Probe.read, 1)
    _respawned(rt, "echo")
    text = scrape(rt)
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # promtool lints too: naming, units, help text. None of its complaints is allowed.
    assert check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr


def test_status_and_events_as_json_with_the_filters_of_bussdcc_events(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("json", Probe(id="probe"), Echo(), http="127.0.0.1:0")
    status = get_json(base(rt) + "/api/status")
    assert status["name"] == "json" and status["pid"] == os.getpid() and status["booted"] is True
    assert status["can_act"] is False  # no token
    assert status["states"] == [s.value for s in WorkerState]
    by_name = {w["name"]: w for w in status["workers"]}
    assert by_name["echo"]["state"] == "running" and by_name["echo"]["pid"] == rt.worker("echo").pid
    assert by_name["probe"]["role"] == "device"
    assert status["stats"]["dispatched"] >= 1
    events = get_json(base(rt) + "/api/events?name=worker.*&n=1000")["events"]
    assert events and all(e["name"].startswith("worker.") for e in events)
    assert {e["payload"]["worker"] for e in events if e["name"] == "worker.started"} == {"echo", "probe"}
    last = get_json(base(rt) + "/api/events?n=2")["events"]
    assert len(last) == 2
    warnings = get_json(base(rt) + "/api/events?severity=WARNING")["events"]
    assert all(e["severity"] in ("WARNING", "ERROR", "CRITICAL") for e in warnings)
    code, _, body = get(base(rt) + "/api/events?severity=LOUD")
    assert code == 400 and b"severity" in body
    code, _, _ = get(base(rt) + "/nothing-here")
    assert code == 404
    # Served on loopback: a page that rebinds its own host name to 127.0.0.1 is refused.
    code, _, _ = get(base(rt) + "/api/status", {"Host": "evil.example:80"})
    assert code == 421
    assert get(base(rt) + "/api/status", {"Host": "localhost"})[0] == 200


def test_the_event_stream_sends_what_is_dispatched_as_it_happens(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("stream", Echo(), http="127.0.0.1:0")
    import urllib.request

    from ._helpers import Ping

    lines: list[str] = []
    opened = threading.Event()
    seen = threading.Event()

    def read() -> None:
        with urllib.request.urlopen(base(rt) + "/api/stream?name=test.*&n=0", timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            opened.set()
            for raw in resp:
                line = raw.decode().rstrip("\n")
                lines.append(line)
                if '"test.pong"' in line:
                    seen.set()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(30)

    # Emitted after the stream opened: it can only arrive live. Echo answers from its own process.
    def pong_seen() -> bool:
        rt.emit(Ping(n=1))
        return seen.wait(0.5)

    wait_until(pong_seen, timeout=30, what="a live test.pong on the stream")
    reader.join(30)
    data = [line for line in lines if line.startswith("data: ") and "test." in line]
    assert data and all('"name": "test.' in line for line in data)  # the name filter holds
    assert "event: status" in lines  # the worker table comes along


def test_http_is_served_on_localhost_by_default_and_bad_addresses_are_refused() -> None:
    from bussdcc.supervisor._http import parse_listen

    assert parse_listen("9100") == ("127.0.0.1", 9100)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("", "localhost:", "host:99999", "127.0.0.1:port", "::1"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            Runtime(name="bad", http=bad)


def test_an_address_in_use_fails_the_boot_and_leaves_nothing_behind(make_runtime: MakeRuntime) -> None:
    rt, _ = make_runtime("first", http="127.0.0.1:0")
    taken = rt.http_address
    assert taken is not None
    second = Runtime(name="second", http=f"{taken[0]}:{taken[1]}")
    second.add_worker(Echo())
    with pytest.raises(BootError, match="cannot serve HTTP"):
        second.boot()
    assert second.run_dir is None and second.http_url is None


def test_bussdcc_run_with_http_prints_the_login_url_and_serves_metrics() -> None:
    port = free_port()
    run = Background(["run", "tests.cli_parts:make_runtime", "--name", "served", "--http", f"127.0.0.1:{port}"])
    try:
        line = run.wait_line("token=", err=True, timeout=60)
        url = line[line.index("http://") :]
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        status, _, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b'bussdcc_runtime_info{name="served"' in body
    finally:
        assert run.stop(60) == 0


def test_toml_http_listen(tmp_path: Path) -> None:
    from bussdcc.cli._config import load_system

    system = tmp_path / "web.toml"
    system.write_text('[runtime]\nname = "web"\n\n[http]\nlisten = "127.0.0.1:9100"\n')
    assert load_system(system).http == "127.0.0.1:9100"
    system.write_text("[http]\nport = 9100\n")
    with pytest.raises(ConfigError, match=r"http\.port: unknown key"):
        load_system(system)
    system.write_text("[http]\nlisten = 9100\n")
    with pytest.raises(ConfigError, match="listen is required"):
        load_system(system)


def test_a_stream_client_that_does_not_read_is_dropped_and_dispatch_goes_on(make_runtime: MakeRuntime) -> None:
    import socket

    from ._helpers import Seq

    rt, rec = make_runtime("slow-reader", http="127.0.0.1:0")
    address = rt.http_address
    assert address is not None
    with socket.create_connection(address, timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /api/stream?n=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.recv(1)  # the stream is open; from now on this client reads nothing
        pad = "x" * 65536
        for i in range(200):  # about 13 MiB: far past one client's bound
            rt.emit(Seq(i=i, pad=pad))
        rec.wait_for("test.seq", count=200, timeout=60)
        wait_until(
            lambda: get_json(base(rt) + "/api/status")["stream_clients_dropped"] >= 1,
            timeout=60,
            what="the slow client to be dropped",
        )

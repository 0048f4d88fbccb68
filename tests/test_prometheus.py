"""A real Prometheus server scrapes a running system and answers a query for one of its metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest

from ._helpers import Echo, MakeRuntime, missing_tool, wait_until
from ._web import free_port, get, tool
from .cli_parts import Probe


@pytest.mark.timeout(300)
def test_prometheus_scrapes_the_runtime_and_answers_a_query(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    prometheus = tool("prometheus")
    if prometheus is None:
        missing_tool("the prometheus server is not installed (apt-get install prometheus; .ci/run installs it)")
    rt, _ = make_runtime("scraped", Echo(), Probe(id="probe"), http="127.0.0.1:0")
    address = rt.http_address
    assert address is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: bussdcc\n"
        f"    static_configs:\n      - targets: ['{address[0]}:{address[1]}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )

    def query(promql: str) -> list[dict[str, object]]:
        assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-4000:]
        try:
            status, _, body = get(f"http://127.0.0.1:{port}/api/v1/query?" + urlencode({"query": promql}), timeout=5)
        except OSError:
            return []  # not listening yet
        if status != 200:
            return []
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    try:
        found = wait_until(
            lambda: query('bussdcc_worker_up{worker="echo", role="service"}'),
            timeout=240,
            what="Prometheus to have scraped bussdcc_worker_up",
        )
        (series,) = found
        assert series["value"][1] == "1"  # type: ignore[index]
        assert series["metric"]["job"] == "bussdcc"  # type: ignore[index]
        (runtime,) = query("bussdcc_runtime_info")
        assert runtime["metric"]["name"] == "scraped"  # type: ignore[index]
        # The scrape itself went well: Prometheus says the target is up.
        (up,) = query('up{job="bussdcc"}')
        assert up["value"][1] == "1"  # type: ignore[index]
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(60)
        log.close()

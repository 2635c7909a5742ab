"""The operator's Prometheus client against a real Prometheus (Debian's binary), empty TSDB.

Catches what a unit test with a canned answer cannot: the query parameters Prometheus itself
accepts (a ``timeout`` of ``2.0s`` is rejected with HTTP 400, which made every status read
``MetricsUnavailable`` on the real cluster).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from disagg.controller.metrics import QUERIES, PrometheusClient, read_snapshot
from disagg.sim.process import free_port


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian package `prometheus`)")
    work: Path = tmp_path_factory.mktemp("prom")
    (work / "p.yml").write_text("global: {scrape_interval: 1m}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'p.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("Prometheus did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_every_query_the_operator_sends_is_accepted_by_prometheus(prometheus: str) -> None:
    client = PrometheusClient(prometheus, timeout_seconds=2.0)
    for name, promql in QUERIES.items():
        assert client.query(promql) == [], name  # valid PromQL, empty TSDB
    assert client.query('label_replace(vector(2), "pod", "w-1", "", "")') == [
        {"metric": {"pod": "w-1"}, "value": [pytest.approx(0, abs=1e12), "2"]}
    ]


def test_with_no_traffic_the_snapshot_is_idle_not_unavailable(prometheus: str) -> None:
    snapshot = read_snapshot(PrometheusClient(prometheus), {})
    assert snapshot.ok
    decisions = snapshot.decisions_of("ns", "llm")
    assert decisions is not None and decisions.total == 0


def test_an_unreachable_prometheus_costs_one_short_timeout_and_no_retries() -> None:
    started = time.monotonic()
    snapshot = read_snapshot(PrometheusClient(f"http://127.0.0.1:{free_port()}", 0.5), {})
    assert not snapshot.ok and snapshot.pool("ns", "p") is None
    assert time.monotonic() - started < 2.0  # 5 refused queries, none retried


def test_a_prometheus_that_never_answers_is_cut_off_by_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        assert PrometheusClient(url, 0.5).query("vector(1)") is None
        assert time.monotonic() - started < 1.5

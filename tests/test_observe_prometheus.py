"""MetricsReader against a real Prometheus (Debian's binary) on loopback, empty TSDB.

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

from disagg.controller.observe import MetricsReader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian package `prometheus`)")
    work: Path = tmp_path_factory.mktemp("prom")
    (work / "p.yml").write_text("global: {scrape_interval: 1m}\n")
    port = _free_port()
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


def test_scalar_and_per_pod_read_a_real_prometheus(prometheus: str) -> None:
    reader = MetricsReader(prometheus, timeout_seconds=2.0)
    assert reader.scalar("vector(3)") == 3.0
    assert reader.per_pod('label_replace(vector(2), "pod", "w-1", "", "")') == {"w-1": 2.0}


def test_decisions_with_no_traffic_are_zero_not_unavailable(prometheus: str) -> None:
    decisions = MetricsReader(prometheus).decisions("ns", "llm")
    assert decisions is not None and decisions.total == 0


def test_unreachable_prometheus_reads_as_none() -> None:
    assert MetricsReader(f"http://127.0.0.1:{_free_port()}", 0.5).scalar("vector(1)") is None

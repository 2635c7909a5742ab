"""The operator under test, as a real process against the e2e cluster.

``E2E_OPERATOR=process`` (default) runs ``disagg operator`` from this checkout as
a subprocess with the cluster's kubeconfig: the fast loop while developing.
``E2E_OPERATOR=pod`` expects the operator already installed in the cluster (by
the Helm chart, see e2e/test_chart.py) and only checks that it runs.  Logs of the
process go to ``$DISAGG_CACHE/logs/operator-e2e.log``.

``--prometheus-url`` (observed load in status, ``DisaggregationEffective``): from
``E2E_PROMETHEUS_URL``, else the local Prometheus of ``testbed.monitoring`` when it runs, else none.
Tests that need it call ``use_prometheus(url)``, which restarts the process with the URL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster.config import Settings

REPO = Path(__file__).resolve().parent.parent


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    prometheus_url: str | None = None
    health_port: int = 0
    metrics_port: int = 0
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("health_port", "metrics_port"):
            if not getattr(self, attr):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    setattr(self, attr, int(s.getsockname()[1]))

    def metrics(self) -> dict[str, float] | None:
        """The operator's own /metrics, live: ``{"name{labels}": value}``."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def health(self) -> dict[str, Any] | None:
        """The operator's /healthz (its ``controller`` probe: queue, reconciles, requests)."""
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "disagg.cli",
                "operator",
                "--kubeconfig",
                str(self.kubeconfig),
                "--liveness",
                f"http://127.0.0.1:{self.health_port}/healthz",
                "--metrics-address",
                f"127.0.0.1:{self.metrics_port}",
                # The e2e tier's gateway image (the default is the release tag).
                "--gateway-image",
                "disagg/gateway:dev",
                *(["--prometheus-url", self.prometheus_url] if self.prometheus_url else []),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    def use_prometheus(self, url: str) -> None:
        """Run with ``--prometheus-url url`` from now on (restarts a running process)."""
        if self.prometheus_url == url:
            return
        self.prometheus_url = url
        if self.proc is not None:
            self.stop()
            self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


_session_operator: OperatorProcess | None = None


def session_operator() -> OperatorProcess | None:
    """The session fixture's operator process while it runs (a module that starts its own
    operator must reuse it instead: two operators would fight over the same objects)."""
    op = _session_operator
    return op if op is not None and op.alive() else None


def _default_prometheus() -> str | None:
    if url := os.environ.get("E2E_PROMETHEUS_URL"):
        return url
    from testbed.monitoring import PROMETHEUS_URL, is_up

    return PROMETHEUS_URL if is_up() else None


@pytest.fixture(scope="session")
def images(cluster) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The operator, gateway and simulator images, built if changed and loaded into the node.

    A Docker daemon this session had to start is stopped again at the end."""
    if cluster.local is None:
        yield  # another cluster (E2E_KUBECONFIG) gets its images some other way
        return
    from testbed.images import ensure_loaded, stop_daemon

    docker = ensure_loaded(str(cluster.local.containerd_socket))
    yield
    if docker.started:
        stop_daemon(docker)


@pytest.fixture(scope="session")
def operator(cluster, crds, images) -> Iterator[OperatorProcess]:  # type: ignore[no-untyped-def]
    """A running operator (a process from this checkout, or the one installed in the cluster)."""
    log = Settings.from_env().cache / "logs" / "operator-e2e.log"
    op = OperatorProcess(Path(cluster.kubeconfig), log, prometheus_url=_default_prometheus())
    if os.environ.get("E2E_OPERATOR", "process") == "pod":
        yield op
        return
    global _session_operator
    op.start()
    _session_operator = op
    try:
        yield op
    finally:
        _session_operator = None
        op.stop()

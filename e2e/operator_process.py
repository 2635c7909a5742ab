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

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import operator_process as testbed_operator
from testbed.cluster.config import Settings


@dataclass
class OperatorProcess(testbed_operator.OperatorProcess):
    """The shared operator process, with the e2e tier's gateway image and Prometheus."""

    prometheus_url: str | None = None

    def flags(self) -> list[str]:
        return [
            # The e2e tier's gateway image (the default is the release tag).
            "--gateway-image",
            "disagg/gateway:dev",
            *(["--prometheus-url", self.prometheus_url] if self.prometheus_url else []),
            *self.extra_args,
        ]

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

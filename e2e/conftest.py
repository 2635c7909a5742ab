"""Fixtures for the e2e tier: a real cluster for the session, a namespace per test, our CRDs.

Which cluster:
* ``E2E_KUBECONFIG=/path`` — any cluster (kind, a cloud cluster...); it is used as is and never
  started or stopped here. ``E2E_KUBECTL`` names the kubectl binary (default: on PATH).
* otherwise the local cluster of ``python -m testbed.cluster``: reused when it is already up (fast
  iteration: ``make cluster-up`` once, then ``pytest e2e`` many times), brought up otherwise
  (and brought down at the end of the session, unless ``E2E_KEEP_CLUSTER=1`` or another test
  session is still using it).

Fixtures: ``cluster`` (session; kubeconfig, kubectl, node facts), ``cluster_kube`` (session
``Kubectl`` without a namespace), ``namespace`` + ``kube`` (per test: a fresh namespace and a
``Kubectl`` bound to it; deleted afterwards), ``crds`` (session: ``crds/*.yaml`` applied and
Established; skips the test cleanly when the folder holds no CRDs yet), ``gpu_node``.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from testbed.cluster.config import Settings
from testbed.cluster.kubectl import Kubectl, condition

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    kubectl: str
    local: Settings | None
    """Settings of the local cluster, or None when ``E2E_KUBECONFIG`` targets another one."""


def _external(kubeconfig: str) -> Cluster:
    kubectl = os.environ.get("E2E_KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        local = Settings.from_env().tool("kubectl")
        kubectl = str(local) if local.exists() else None
    if not kubectl:
        pytest.fail("E2E_KUBECONFIG is set but no kubectl found (set E2E_KUBECTL)")
    return Cluster(Path(kubeconfig), kubectl, None)


def _try_exclusive(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if kubeconfig := os.environ.get("E2E_KUBECONFIG"):
        yield _external(kubeconfig)
        return
    from testbed.cluster.install import install
    from testbed.cluster.lifecycle import down, is_up, up

    settings = Settings.from_env()
    if os.geteuid() != 0:
        pytest.skip("the local cluster needs root; set E2E_KUBECONFIG to use another cluster")
    settings.cache.mkdir(parents=True, exist_ok=True)
    # Every session holds a shared lock while it uses the cluster; the session that started it
    # brings it down only if it can then take the lock exclusively (no other session uses it).
    with (settings.cache / "cluster.users").open("w") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        started_here = not is_up(settings)
        if started_here:
            install(settings, skip=frozenset({"prometheus-adapter"}))
            up(settings)
        try:
            yield Cluster(settings.kubeconfig, str(settings.tool("kubectl")), settings)
        finally:
            fcntl.flock(users, fcntl.LOCK_UN)
            keep = os.environ.get("E2E_KEEP_CLUSTER") == "1"
            if started_here and not keep and _try_exclusive(users):
                down(settings)


@pytest.fixture(scope="session")
def cluster_kube(cluster: Cluster) -> Kubectl:
    kube = Kubectl(cluster.kubectl, cluster.kubeconfig)
    kube.kubectl("version")  # fails fast, with kubectl's message, if the cluster is unreachable
    return kube


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{stem}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster_kube: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    name = _namespace_name(request.node.name)
    cluster_kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    ns_kube = cluster_kube.in_namespace(name)
    # Pods are admitted only once the namespace's default ServiceAccount exists.
    ns_kube.wait_for(lambda: ns_kube.get("serviceaccount", "default"), 30, "default ServiceAccount")
    try:
        yield name
    finally:
        # Kubernetes deletes a namespace's pods first and the rest only once they are gone, which
        # it checks again after the longest grace period (a worker's drain timeout: minutes).
        # Deleting our objects first keeps them from lingering into later tests meanwhile.
        ns_kube.kubectl(
            "delete",
            "disaggdeployments.disagg.dev,inferencepools.disagg.dev",
            "--all",
            "--wait=false",
            check=False,
        )
        cluster_kube.delete("namespace", name, wait=False)


@pytest.fixture
def kube(cluster_kube: Kubectl, namespace: str) -> Kubectl:
    """A ``Kubectl`` whose commands default to this test's own namespace."""
    return cluster_kube.in_namespace(namespace)


@pytest.fixture(scope="session")
def crds(cluster_kube: Kubectl) -> list[str]:
    """Apply ``crds/*.yaml`` and wait until each CRD is Established; returns their names."""
    files = sorted(CRD_DIR.glob("*.yaml")) if CRD_DIR.is_dir() else []
    if not files:
        pytest.skip("no CRDs in crds/ yet (generate them with `make crds`)")
    names: list[str] = []
    for path in files:
        cluster_kube.apply(path.read_text())
        out = cluster_kube.kubectl("get", "-f", str(path), "-o", "name")
        names += [line.split("/", 1)[1] for line in out.split() if "/" in line]
    for name in names:
        cluster_kube.wait_for_object(
            "crd", name, lambda o: (condition(o, "Established") or {}).get("status") == "True", 30
        )
    return names


@pytest.fixture(scope="session")
def gpu_node(cluster_kube: Kubectl) -> dict[str, Any]:
    """A node that advertises ``nvidia.com/gpu`` (the local node does; kind needs a patch)."""
    for node in cluster_kube.items("nodes"):
        if int(node["status"].get("allocatable", {}).get("nvidia.com/gpu", "0")) > 0:
            return dict(node)
    pytest.fail(
        "no node advertises nvidia.com/gpu; on kind, patch a node's status capacity "
        "(docs/cluster.md, 'Other clusters')"
    )


# The operator under test (a process from this checkout, or the in-cluster one).
from e2e.operator_process import images, operator  # noqa: E402, F401

"""Smoke tests of the container images, run the way Kubernetes' "restricted" Pod Security runs them.

Each image starts with a read-only root filesystem, as uid 65532, all capabilities dropped and
no privilege escalation; the simulator image serves ``/health`` and ``/v1/models`` through a port
published on 127.0.0.1 only.  The last test loads the images into the local cluster's containerd
and runs each as a pod in a namespace that enforces Pod Security "restricted".

The images are (re)built first through ``testbed.images`` -- seconds when nothing changed -- so the
tests check the code in this checkout.  No Docker (no daemon and no ``dockerd`` we may start)
skips the module; ``E2E_BASE_IMAGE`` builds from another base (e.g. ``python:3.11-slim-bookworm``
where a registry is reachable) instead of the debootstrapped one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from testbed import images
from testbed.cluster.kubectl import Kubectl, condition
from testbed.images_docker import Docker, load_into_containerd

if TYPE_CHECKING:
    from e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

#: Size budgets (MB, as `docker images` counts them: base included), from the sizes measured in
#: docs/images.md plus headroom; a budget breach means a dependency crept in.  The gateway and
#: sim images grew by pyzmq, msgpack, tokenizers and jinja2 for KV-event routing (issue 14).
SIZE_BUDGET_MB = {"operator": 290, "gateway": 235, "sim": 235}
#: How a restricted pod runs a container, in `docker run` flags (never pulling: no registry here).
RESTRICTED = ["--pull", "never", "--read-only", "--user", "65532:65532", "--cap-drop", "ALL"]
RESTRICTED += ["--security-opt", "no-new-privileges"]


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    client = Docker(images.cache_dir() / "dockerd")
    startable = shutil.which("dockerd", path="/usr/sbin:/usr/bin:/sbin:/bin") and os.geteuid() == 0
    if not startable and not client.up():
        pytest.skip("docker unavailable: no daemon answers and dockerd cannot be started here")
    started = client.ensure()
    try:
        images.build(client, os.environ.get("E2E_BASE_IMAGE"), list(images.COMPONENTS))
        yield client
    finally:
        if started:  # leave no daemon behind that this test session started
            images.stop_daemon(client)


def _run(docker: Docker, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [docker.binary, "run", "--rm", "--network", "none", *RESTRICTED, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=docker.env, timeout=timeout)


@pytest.mark.parametrize("component", images.COMPONENTS)
def test_cli_help_runs_read_only_as_non_root(docker: Docker, component: str) -> None:
    image = f"disagg/{component}:dev"
    top = _run(docker, "--entrypoint", "disagg", image, "--help")
    assert top.returncode == 0, top.stderr
    assert "usage: disagg <command>" in top.stdout
    own = _run(docker, image, "--help")  # the image's own entrypoint: `disagg <component>`
    assert own.returncode == 0, own.stderr
    assert f"usage: disagg {component}" in own.stdout


@pytest.mark.parametrize("component", images.COMPONENTS)
def test_image_defaults_to_numeric_non_root_user(docker: Docker, component: str) -> None:
    cmd = [
        docker.binary,
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        "--entrypoint",
        "id",
    ]
    ids = subprocess.run(
        [*cmd, f"disagg/{component}:dev"],
        capture_output=True,
        text=True,
        env=docker.env,
        timeout=60,
    )
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.startswith("uid=65532 gid=65532"), ids.stdout


@pytest.mark.parametrize("component", images.COMPONENTS)
def test_image_is_small_and_tagged_with_the_project_version(docker: Docker, component: str) -> None:
    versioned, dev = images.image_refs(component)
    assert versioned == f"disagg/{component}:{images.version()}"
    assert docker.image_id(versioned) == docker.image_id(dev)
    size_mb = (docker.size(versioned) or 0) / 1e6
    assert 0 < size_mb <= SIZE_BUDGET_MB[component], f"{versioned} is {size_mb:.0f} MB"


def test_operator_image_imports_the_kubernetes_layer(docker: Docker) -> None:
    # The operator image drops kubernetes/aio (unused); the modules the operator uses must import.
    code = "import kopf, disagg.controller.kube, disagg.controller.cli; print('imported')"
    done = _run(docker, "--entrypoint", "python3", "disagg/operator:dev", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_sim_image_answers_vllm_command_line(docker: Docker) -> None:
    shim = _run(docker, "--entrypoint", "vllm", "disagg/sim:dev", "serve", "--help")
    assert shim.returncode == 0, shim.stderr
    assert "usage: disagg sim" in shim.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sim_image_serves_health_on_a_loopback_port(docker: Docker) -> None:
    port, name = _free_port(), f"disagg-sim-smoke-{secrets.token_hex(3)}"
    cmd = [docker.binary, "run", "-d", "--rm", "--name", name, *RESTRICTED]
    cmd += ["-p", f"127.0.0.1:{port}:8000", "disagg/sim:dev", "smoke-model"]
    cmd += ["--host", "0.0.0.0", "--port", "8000"]
    started = subprocess.run(cmd, capture_output=True, text=True, env=docker.env, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        deadline, status = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        logs = subprocess.run(
            [docker.binary, "logs", name], capture_output=True, text=True, env=docker.env
        )
        assert status == 200, f"/health never answered 200 within 30 s; logs:\n{logs.stderr}"
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
        assert [card["id"] for card in models["data"]] == ["smoke-model"]
    finally:
        subprocess.run(
            [docker.binary, "rm", "-f", name], capture_output=True, env=docker.env, timeout=60
        )


RESTRICTED_CONTEXT = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod(name: str, image: str, args: list[str], **container: Any) -> dict[str, Any]:
    spec = {"name": "main", "image": image, "imagePullPolicy": "Never", "args": args}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{**spec, **container, "securityContext": RESTRICTED_CONTEXT}],
        },
    }


def test_images_run_as_pods_under_restricted_pod_security(
    docker: Docker, cluster: Cluster, kube: Kubectl, namespace: str
) -> None:
    if cluster.local is None:
        pytest.skip("E2E_KUBECONFIG cluster: load the images yourself (docs/images.md, kind)")
    refs = [ref for c in images.COMPONENTS for ref in images.image_refs(c)]
    address = str(cluster.local.containerd_socket)
    assert load_into_containerd(docker, refs, address, images.cache_dir() / "logs")
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    probe = {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1}
    kube.create(
        _pod("sim", "disagg/sim:dev", ["smoke-model", "--host", "0.0.0.0"], readinessProbe=probe)
    )
    for component in ("operator", "gateway"):
        kube.create(_pod(f"{component}-help", f"disagg/{component}:dev", ["--help"]))
    kube.wait_for_object(
        "pod", "sim", lambda o: (condition(o, "Ready") or {}).get("status") == "True", 90
    )
    for component in ("operator", "gateway"):
        pod = kube.wait_for_object(
            "pod", f"{component}-help", lambda o: o["status"].get("phase") == "Succeeded", 90
        )
        assert pod["status"]["phase"] == "Succeeded"
        assert f"usage: disagg {component}" in kube.kubectl("logs", f"{component}-help")

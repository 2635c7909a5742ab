"""``cluster up | down | status``: start the components in dependency order, stop them all.

``up`` is idempotent (a running cluster is left alone; a half-started one is completed; when
nothing runs, leftovers of a killed run are cleaned first) and
waits on real readiness signals — etcd /health, apiserver /readyz, the Node's Ready condition,
the default ServiceAccount — each with a deadline, never a fixed sleep. It also advertises the
fake GPU and RDMA devices: extended resources are PATCHed into the Node's status capacity (the
documented way for resources no device plugin manages) after every kubelet start, because a
restarted kubelet zeroes unknown extended resources.

``down`` leaves nothing behind (``teardown``); images imported into containerd and the
certificates stay in the cache, which is what makes a warm ``up`` fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import components, config, network, pki, procs, teardown
from .apiclient import ApiClient, Deadline, wait_until
from .config import Settings

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE = ("containerd", "kubelet", "kube-proxy")
ALL = ("containerd", *CONTROL_PLANE, "coredns", "kube-proxy", "kubelet")


def kubectl(settings: Settings, *args: str, check: bool = True) -> str:
    cmd = [str(settings.tool("kubectl")), f"--kubeconfig={settings.kubeconfig}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _log_tail(settings: Settings, name: str, lines: int = 25) -> str:
    path = procs.log_path(settings, name)
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_component(settings: Settings, name: str, what: str, probe: Any, timeout: float) -> None:
    def guarded() -> tuple[bool, object]:
        if procs.pid_of(settings, name) is None:
            raise RuntimeError(
                f"{name} exited while waiting for {what}; log {procs.log_path(settings, name)}:\n"
                + _log_tail(settings, name)
            )
        result: tuple[bool, object] = probe()
        return result

    try:
        wait_until(what, guarded, timeout)
    except Deadline as err:
        raise RuntimeError(f"{err}\n--- {name} log tail:\n{_log_tail(settings, name)}") from err


def _etcd_healthy(settings: Settings) -> tuple[bool, object]:
    url = f"http://127.0.0.1:{settings.etcd_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError) as err:
        return False, err
    return body.get("health") == "true", body


def _http_ok(url: str) -> tuple[bool, object]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200, resp.status
    except OSError as err:
        return False, err


def _create(api: ApiClient, obj: dict[str, Any]) -> None:
    """Create a cluster-scoped RBAC object unless it exists."""
    plural = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}
    path = f"/apis/rbac.authorization.k8s.io/v1/{plural[obj['kind']]}"
    status, body = api.request("POST", path, obj)
    if status not in (201, 409):
        raise RuntimeError(f"creating {obj['kind']} {obj['metadata']['name']}: {status} {body}")


def _node(api: ApiClient, settings: Settings) -> dict[str, Any] | None:
    status, body = api.get(f"/api/v1/nodes/{settings.node_name}")
    return body if status == 200 and isinstance(body, dict) else None


def node_ready(node: dict[str, Any] | None) -> bool:
    if not node:
        return False
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _advertised(node: dict[str, Any] | None, settings: Settings) -> bool:
    allocatable = (node or {}).get("status", {}).get("allocatable", {})
    gpus, rdma = allocatable.get("nvidia.com/gpu"), allocatable.get("rdma/ib")
    return bool(gpus == str(settings.gpus) and rdma == str(settings.rdma))


def advertise_devices(api: ApiClient, settings: Settings) -> None:
    """Label the node as a GPU node and add fake GPUs/RDMA devices to its capacity."""
    labels = settings.node_labels()
    status, body = api.request(
        "PATCH",
        f"/api/v1/nodes/{settings.node_name}",
        {"metadata": {"labels": labels}},
        "application/merge-patch+json",
    )
    if status != 200:
        raise RuntimeError(f"labelling node failed ({status}): {body}")
    resources = {"nvidia.com/gpu": str(settings.gpus), "rdma/ib": str(settings.rdma)}
    status, body = api.request(
        "PATCH",
        f"/api/v1/nodes/{settings.node_name}/status",
        {"status": {"capacity": resources, "allocatable": resources}},
        "application/merge-patch+json",
    )
    if status != 200:
        raise RuntimeError(f"patching node capacity failed ({status}): {body}")


def is_up(settings: Settings) -> bool:
    if any(procs.pid_of(settings, name) is None for name in ALL):
        return False
    if not (settings.pki / "admin.crt").exists():
        return False
    api = ApiClient(settings)
    node = _node(api, settings)
    return api.get("/readyz")[0] == 200 and node_ready(node) and _advertised(node, settings)


def _ensure_pause_image(settings: Settings) -> None:
    listed = subprocess.run(
        components.ctr(settings, "images", "ls", "-q"), capture_output=True, text=True, check=False
    ).stdout.split()
    if any(name.endswith(config.PAUSE_IMAGE) for name in listed):
        return
    load_image(settings, components.image_archive(settings))


def load_image(settings: Settings, archive: Path) -> None:
    """Import an image archive (``docker save`` or OCI layout tar) into the node's containerd."""
    if not archive.exists():
        raise FileNotFoundError(f"image archive {archive} does not exist")
    proc = subprocess.run(
        components.ctr(settings, "images", "import", "--no-unpack=false", str(archive)),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ctr images import {archive} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def exclusive(settings: Settings) -> Iterator[None]:
    """Serialize up/down across processes (two test sessions may start at once)."""
    settings.cache.mkdir(parents=True, exist_ok=True)
    with (settings.cache / "cluster.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up(settings: Settings) -> dict[str, float]:
    """Bring the cluster up (binaries must be installed); returns seconds per phase."""
    with exclusive(settings):
        return _up(settings)


def down(settings: Settings) -> list[str]:
    """Stop everything; returns what was cleaned, for the caller to print."""
    with exclusive(settings):
        return teardown.clean(settings)


def _up(settings: Settings) -> dict[str, float]:
    marks: dict[str, float] = {}
    started = last = time.monotonic()

    def mark(phase: str) -> None:
        nonlocal last
        now = time.monotonic()
        marks[phase] = round(now - last, 2)
        last = now
        _say(f"  {phase}: {marks[phase]}s")

    missing = [
        n
        for n in ("etcd", "kubectl", "coredns", *CONTROL_PLANE[1:], *NODE[1:])
        if not settings.tool(n).exists()
    ]
    if missing:
        raise RuntimeError(f"not installed: {missing}; run `python -m testbed.cluster install`")
    if is_up(settings):
        _say("cluster is already up")
        return {"total": round(time.monotonic() - started, 2)}
    if all(procs.pid_of(settings, name) is None for name in ALL):
        # Nothing of ours runs: start from a clean slate. A previous run may have been killed
        # without `down` (a CI job's end, a crash) and left mounts, veths, chains and old etcd
        # data behind; `teardown.clean` removes exactly those and is quick when there is nothing.
        teardown.clean(settings)
        mark("clean slate")
    for d in (settings.state, settings.logs, settings.run):
        d.mkdir(parents=True, exist_ok=True)
    pki.ensure(settings)
    network.setup(settings)
    mark("certificates + network")

    procs.start(
        settings, "containerd", components.containerd(settings), env=components.CONTAINERD_ENV
    )
    _wait_component(
        settings,
        "containerd",
        "containerd socket",
        lambda: (
            subprocess.run(
                components.ctr(settings, "version"), capture_output=True, check=False
            ).returncode
            == 0,
            "ctr version",
        ),
        30,
    )
    _ensure_pause_image(settings)
    mark("containerd + pause image")

    procs.start(settings, "etcd", components.etcd(settings))
    _wait_component(settings, "etcd", "etcd /health", lambda: _etcd_healthy(settings), 60)
    mark("etcd")

    api = ApiClient(settings)
    procs.start(settings, "kube-apiserver", components.apiserver(settings))
    _wait_component(
        settings,
        "kube-apiserver",
        "apiserver /readyz",
        lambda: (api.get("/readyz")[0] == 200, api.get("/readyz")),
        90,
    )
    mark("kube-apiserver")

    for obj in components.COREDNS_RBAC:
        _create(api, obj)
    procs.start(settings, "coredns", components.coredns(settings))
    procs.start(settings, "kube-controller-manager", components.controller_manager(settings))
    procs.start(settings, "kube-scheduler", components.scheduler(settings))
    procs.start(settings, "kube-proxy", components.kube_proxy(settings))
    procs.start(settings, "kubelet", components.kubelet(settings))
    _wait_component(
        settings,
        "kubelet",
        "node registered",
        lambda: (_node(api, settings) is not None, "no node yet"),
        90,
    )
    advertise_devices(api, settings)
    _wait_component(
        settings,
        "kubelet",
        "node Ready with GPUs/RDMA allocatable",
        lambda: (
            node_ready(n := _node(api, settings)) and _advertised(n, settings),
            (n or {}).get("status", {}).get("conditions"),
        ),
        120,
    )
    mark("kubelet: node Ready")
    _wait_component(
        settings,
        "kube-controller-manager",
        "default ServiceAccount",
        lambda: (api.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200, ""),
        60,
    )
    _wait_component(
        settings,
        "coredns",
        "CoreDNS /ready",
        lambda: _http_ok(f"http://{components.COREDNS_READY}/ready"),
        60,
    )
    mark("controllers + DNS")
    marks["total"] = round(time.monotonic() - started, 2)
    (settings.state / "up-times.json").write_text(json.dumps(marks))
    return marks


def status(settings: Settings) -> tuple[bool, list[str]]:
    """Return (healthy, lines) describing each component, the apiserver and the node."""
    lines = []
    running = 0
    for name in ALL:
        pid = procs.pid_of(settings, name)
        running += pid is not None
        lines.append(f"{name:<24} {'running pid ' + str(pid) if pid else 'stopped'}")
    if running == 0:
        lines.append("cluster is down")
        return False, lines
    healthy = running == len(ALL)
    if (settings.pki / "admin.crt").exists():
        api = ApiClient(settings)
        ready = api.get("/readyz")
        lines.append(f"{'apiserver /readyz':<24} {ready[0]} {settings.server}")
        node = _node(api, settings)
        alloc = (node or {}).get("status", {}).get("allocatable", {})
        lines.append(
            f"{'node ' + settings.node_name:<24} ready={node_ready(node)} "
            f"gpu={alloc.get('nvidia.com/gpu')} rdma={alloc.get('rdma/ib')} "
            f"cpu={alloc.get('cpu')} memory={alloc.get('memory')}"
        )
        healthy = healthy and ready[0] == 200 and node_ready(node) and _advertised(node, settings)
    lines.append(f"{'kubeconfig':<24} {settings.kubeconfig}")
    lines.append(f"{'logs':<24} {settings.logs}")
    return healthy, lines

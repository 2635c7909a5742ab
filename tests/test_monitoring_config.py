"""The local metrics pipeline's configuration (testbed/monitoring), checked without a cluster.

``promtool`` (Debian's prometheus package) judges the generated Prometheus configuration, and the
pod-discovery translation is checked on pod objects as the API server returns them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from testbed.cluster.config import Settings
from testbed.monitoring.pod_discovery import target_groups
from testbed.monitoring.stack import RULES, prometheus_config, registration


def _pod(name: str, ip: str | None, annotations: dict[str, str]) -> dict[str, object]:
    status: dict[str, str] = {"phase": "Running"}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "annotations": annotations,
            "labels": {"app.kubernetes.io/name": "vllm"},
        },
        "spec": {"nodeName": "disagg-node"},
        "status": status,
    }


def test_prometheus_config_is_valid_for_prometheus(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian package `prometheus`)")
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(prometheus_config(Settings.from_env())))
    proc = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_relabelling_sets_namespace_and_pod_only() -> None:
    relabel = prometheus_config(Settings.from_env())["scrape_configs"][0]["relabel_configs"]
    targets = {r.get("target_label") for r in relabel} - {None}
    assert targets == {"__address__", "__metrics_path__", "namespace", "pod"}  # no `pool`
    keep_ip = [r for r in relabel if r.get("source_labels") == ["__meta_kubernetes_pod_ip"]]
    assert keep_ip and keep_ip[0]["regex"].startswith(r"10\.244\.0\.")


def test_pods_become_target_groups_with_kubernetes_sd_labels() -> None:
    groups = target_groups(
        [
            _pod(
                "w-1", "10.244.0.12", {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}
            ),
            _pod("pending", None, {"prometheus.io/scrape": "true"}),
        ]
    )
    assert len(groups) == 1  # no IP yet: nothing to scrape
    (group,) = groups
    assert group["targets"] == ["10.244.0.12:8000"]
    labels = group["labels"]
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert labels["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "vllm"
    assert labels["__meta_kubernetes_namespace"] == "ns"
    assert labels["__meta_kubernetes_pod_name"] == "w-1"


def test_adapter_registration_and_rules(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text("a CA certificate\n")
    objects = registration(Settings(cache=tmp_path))
    services = [o for o in objects if o["kind"] == "APIService"]
    assert sorted(o["metadata"]["name"] for o in services) == [
        "v1beta1.custom.metrics.k8s.io",
        "v1beta1.external.metrics.k8s.io",
    ]
    assert all(o["spec"]["caBundle"] and "insecureSkipTLSVerify" not in o["spec"] for o in services)
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert "selector" not in service["spec"]
    rules = yaml.safe_load(RULES.read_text())
    exposed = {r["name"]["as"] for r in rules["rules"] + rules["externalRules"]}
    assert "disagg_gateway_queue_depth" in exposed

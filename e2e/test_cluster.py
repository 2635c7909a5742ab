"""Smoke tests of the cluster itself: what the operator's e2e tests take for granted.

The node must be Ready and advertise fake GPUs and RDMA devices; the scheduler must place a pod
that fits them and refuse one that does not (with the reason a user sees in ``kubectl
describe``); pods must reach the API server through the ``kubernetes`` Service (the operator
runs as a pod); the HPA controller must act on a ``/scale`` subresource.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest

from testbed.cluster.config import PAUSE_IMAGE
from testbed.cluster.kubectl import Kubectl, condition

pytestmark = pytest.mark.e2e

TEST_IMAGE = os.environ.get("E2E_TEST_IMAGE", PAUSE_IMAGE)


def pod(name: str, gpus: int, rdma: int, command: list[str] | None = None) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus), "rdma/ib": str(rdma)}
    container: dict[str, Any] = {
        "name": "main",
        "image": TEST_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"limits": limits, "requests": {"cpu": "10m", "memory": "16Mi", **limits}},
    }
    if command:
        container["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [container],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
        },
    }


def test_api_server_is_healthy(cluster_kube: Kubectl) -> None:
    assert cluster_kube.kubectl("get", "--raw", "/readyz").strip() == "ok"
    verbose = cluster_kube.kubectl("get", "--raw", "/livez?verbose")
    assert "livez check passed" in verbose


def test_aggregation_layer_is_configured(cluster_kube: Kubectl) -> None:
    auth = cluster_kube.in_namespace("kube-system").get(
        "configmap", "extension-apiserver-authentication"
    )
    assert auth is not None
    data = auth["data"]
    assert "BEGIN CERTIFICATE" in data["requestheader-client-ca-file"]
    assert "front-proxy-client" in data["requestheader-allowed-names"]


def test_node_is_ready_and_advertises_gpus_and_rdma(
    cluster_kube: Kubectl, gpu_node: dict[str, Any]
) -> None:
    name = gpu_node["metadata"]["name"]
    assert (condition(gpu_node, "Ready") or {}).get("status") == "True"
    allocatable = gpu_node["status"]["allocatable"]
    assert int(allocatable["nvidia.com/gpu"]) >= 1
    assert int(allocatable["rdma/ib"]) >= 1
    assert gpu_node["metadata"]["labels"].get("nvidia.com/gpu.product")
    wide = cluster_kube.kubectl("get", "nodes", "-o", "wide")
    row = next(line for line in wide.splitlines() if line.startswith(name))
    assert " Ready " in row
    described = cluster_kube.kubectl("describe", "node", name)
    assert "nvidia.com/gpu:" in described and "rdma/ib:" in described


def test_pod_with_gpus_and_rdma_is_scheduled_and_runs(
    kube: Kubectl, gpu_node: dict[str, Any]
) -> None:
    kube.apply(pod("gpu-worker", gpus=2, rdma=1))
    running = kube.wait_for_object(
        "pod", "gpu-worker", lambda p: p["status"].get("phase") == "Running", timeout=90
    )
    assert running["spec"]["nodeName"] == gpu_node["metadata"]["name"]
    pod_ip = ipaddress.ip_address(running["status"]["podIP"])
    assert not pod_ip.is_loopback
    limits = running["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2" and limits["rdma/ib"] == "1"


def test_pod_asking_for_more_gpus_than_the_node_has_stays_pending(
    kube: Kubectl, gpu_node: dict[str, Any]
) -> None:
    too_many = int(gpu_node["status"]["allocatable"]["nvidia.com/gpu"]) + 1
    kube.apply(pod("too-big", gpus=too_many, rdma=1))

    def unschedulable(p: dict[str, Any]) -> bool:
        scheduled = condition(p, "PodScheduled") or {}
        return scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"

    pending = kube.wait_for_object("pod", "too-big", unschedulable, timeout=60)
    assert pending["status"]["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in (condition(pending, "PodScheduled") or {})["message"]
    event = kube.wait_for(
        lambda: [e for e in kube.events("too-big") if e.get("reason") == "FailedScheduling"],
        30,
        "FailedScheduling event",
    )[0]
    assert "Insufficient nvidia.com/gpu" in event["message"]


def test_pod_reaches_the_api_server_through_the_kubernetes_service(kube: Kubectl) -> None:
    service = kube.in_namespace("default").get("service", "kubernetes")
    assert service is not None
    target = f"{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    kube.apply(pod("probe", gpus=0, rdma=0, command=["/pause", "-connect", target]))
    done = kube.wait_for_object(
        "pod", "probe", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), 90
    )
    logs = kube.kubectl("logs", "probe")
    assert done["status"]["phase"] == "Succeeded", logs
    assert "connected to" in logs


def test_pod_resolves_service_names_through_cluster_dns(kube: Kubectl, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "named"},
            "spec": {"selector": {"app": "none"}, "ports": [{"port": 8000}]},
        }
    )
    service = kube.wait_for(lambda: kube.get("service", "named"), 30, "service named")
    kube.apply(pod("dns", gpus=0, rdma=0, command=["/pause", "-resolve", "named"]))
    done = kube.wait_for_object(
        "pod", "dns", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), 90
    )
    logs = kube.kubectl("logs", "dns")
    assert done["status"]["phase"] == "Succeeded", logs
    # The short name expands through the pod's search path to named.<namespace>.svc.cluster.local.
    assert service["spec"]["clusterIP"] in logs


def test_hpa_controller_scales_a_deployment_to_its_minimum(kube: Kubectl) -> None:
    labels = {"app": "hpa-target"}
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "hpa-target"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "main",
                                "image": TEST_IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                            }
                        ],
                    },
                },
            },
        }
    )
    kube.apply(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "hpa-target"},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "hpa-target",
                },
                "minReplicas": 2,
                "maxReplicas": 3,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 80},
                        },
                    }
                ],
            },
        }
    )
    # Below minReplicas the HPA controller rescales through /scale without needing metrics.
    kube.wait_for_object("deployment", "hpa-target", lambda d: d["spec"]["replicas"] == 2, 60)
    hpa = kube.wait_for_object(
        "hpa", "hpa-target", lambda h: condition(h, "AbleToScale") is not None, 60
    )
    assert hpa["status"]["desiredReplicas"] == 2
    kube.wait_for_object(
        "deployment", "hpa-target", lambda d: d["status"].get("readyReplicas") == 2, 90
    )

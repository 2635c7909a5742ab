"""The operator against the real cluster: children, status, updates, GC, pruning, restarts.

Worker pods run the simulator image (``E2E_WORKER_IMAGE``, default
``disagg/sim:dev``, loaded into containerd by ``make images``); the simulator
accepts vLLM's command line, so the pods run what the operator rendered, unchanged.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from e2e.operator_process import OperatorProcess
from testbed.cluster.kubectl import Kubectl, condition

pytestmark = pytest.mark.e2e

WORKER_IMAGE = os.environ.get("E2E_WORKER_IMAGE", "disagg/sim:dev")
GATEWAY_IMAGE = os.environ.get("E2E_GATEWAY_IMAGE", "disagg/gateway:dev")
IP = "inferencepools.disagg.dev"
DD = "disaggdeployments.disagg.dev"


def sim_engine(speedup: str = "50", **extra: Any) -> dict[str, Any]:
    # The simulator's speed-up goes in the environment: the command line stays vLLM's own.
    env = [{"name": "DISAGG_SIM_SPEEDUP", "value": speedup}]
    return {"image": WORKER_IMAGE, "imagePullPolicy": "Never", "env": env, **extra}


def small_resources() -> dict[str, Any]:
    return {"cpu": "100m", "memory": "256Mi", "sharedMemory": "64Mi"}


def a_pool(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "role": "aggregated",
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"},
        "engine": sim_engine(),
        "kvTransfer": {"connector": "None"},
        "resources": small_resources(),
        "drain": {"timeoutSeconds": 5},
    }
    body.update(spec)
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": body,
    }


def a_disagg(name: str, speedup: str = "50", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"},
        "engine": sim_engine(speedup),
        # A short drain needs a lease no longer than it (admission checks it).
        "kvTransfer": {"leaseSeconds": 5},
        "prefill": {"resources": small_resources(), "drain": {"timeoutSeconds": 5}},
        "decode": {"resources": small_resources(), "drain": {"timeoutSeconds": 5}},
        "gateway": {"image": GATEWAY_IMAGE, "cpu": "100m", "memory": "256Mi"},
    }
    body.update(spec)
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggDeployment",
        "metadata": {"name": name},
        "spec": body,
    }


def cond_is(obj: dict[str, Any], type_: str, status: str) -> bool:
    return (condition(obj, type_) or {}).get("status") == status


def test_pool_becomes_deployment_service_and_pdb_once_it_has_two_workers(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.apply(a_pool("solo", replicas=1))
    deployment = kube.wait_for(lambda: kube.get("deployment", "solo"), 60, "Deployment solo")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert container["args"][:2] == ["--served-model-name", "llama"]
    assert (
        container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )  # quantities come back as strings
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("InferencePool", "solo", True)
    service = kube.wait_for(lambda: kube.get("service", "solo"), 30, "Service solo")
    assert service["spec"]["clusterIP"] == "None"
    pool = kube.wait_for_object(
        IP, "solo", lambda o: o.get("status", {}).get("selector") == "disagg.dev/pool=solo"
    )
    assert pool["status"]["observedGeneration"] == pool["metadata"]["generation"]
    applied = kube.wait_for(
        lambda: [e for e in kube.events("solo") if e.get("reason") == "Applied"],
        30,
        "Applied event",
    )
    assert "Deployment/solo" in applied[0]["message"] and "Service/solo" in applied[0]["message"]
    # One worker: a budget with maxUnavailable 1 would protect nothing, so there is none.
    assert kube.get("pdb", "solo") is None
    kube.apply(a_pool("solo", replicas=2))
    assert kube.wait_for(lambda: kube.get("pdb", "solo"), 30, "PDB solo")


def test_sim_workers_become_ready_and_pool_reports_ready(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.apply(a_pool("ready", replicas=1))
    pool = kube.wait_for_object(IP, "ready", lambda o: cond_is(o, "Ready", "True"), 180)
    assert pool["status"]["readyReplicas"] == 1
    assert cond_is(pool, "RDMAReady", "False")  # TCP is surfaced, not hidden
    printed = kube.kubectl("get", IP)
    header = printed.splitlines()[0].split()
    assert header[:6] == ["NAME", "ROLE", "MODEL", "DESIRED", "READY", "STATUS"], printed
    assert "aggregated" in printed and "True" in printed


def test_pool_wanting_more_gpus_than_the_node_has_stays_pending_and_says_why(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.apply(a_pool("greedy", parallelism={"tensor": 16}))
    pool = kube.wait_for_object(
        IP,
        "greedy",
        lambda o: (condition(o, "Degraded") or {}).get("reason") == "Unschedulable",
        90,
    )
    assert "Insufficient nvidia.com/gpu" in condition(pool, "Degraded")["message"]  # type: ignore[index]
    assert cond_is(pool, "Ready", "False")
    pods = kube.items("pods", "disagg.dev/pool=greedy")
    assert pods and all(p["status"]["phase"] == "Pending" for p in pods)


def test_kubectl_scale_on_a_pool_changes_its_deployment(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.apply(a_pool("scaled", replicas=1))
    kube.wait_for(lambda: kube.get("deployment", "scaled"), 60, "Deployment scaled")
    kube.kubectl("scale", f"{IP}/scaled", "--replicas=2")
    kube.wait_for_object("deployment", "scaled", lambda d: d["spec"]["replicas"] == 2, 60)


def test_autoscaling_off_prunes_the_hpa(operator: OperatorProcess, kube: Kubectl) -> None:
    kube.apply(a_pool("auto", autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3}))
    hpa = kube.wait_for(lambda: kube.get("hpa", "auto"), 60, "HPA auto")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "name": "auto",
    }
    kube.apply(a_pool("auto", autoscaling={"enabled": False}))
    kube.wait_for(lambda: kube.get("hpa", "auto") is None, 60, "HPA auto pruned")


def _children(kube: Kubectl) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind in (
        IP,
        "deployments",
        "services",
        "configmaps",
        "pdb",
        "roles",
        "rolebindings",
        "serviceaccounts",
    ):
        names = [
            o["metadata"]["name"]
            for o in kube.items(kind)
            if o["metadata"]["name"].startswith("llm")
        ]
        out[kind] = sorted(names)
    return out


def test_disaggdeployment_children_update_in_place_and_are_garbage_collected(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.apply(a_disagg("llm"))
    for name in ("llm-prefill", "llm-decode", "llm-gateway"):
        kube.wait_for(lambda n=name: kube.get("deployment", n), 90, f"Deployment {name}")
    before = _children(kube)
    assert before[IP] == ["llm-decode", "llm-prefill"]
    assert before["deployments"] == ["llm-decode", "llm-gateway", "llm-prefill"]
    assert "llm-gateway" in before["configmaps"]
    uid = kube.get("deployment", "llm-decode")["metadata"]["uid"]  # type: ignore[index]

    # A spec change reaches the grandchildren in place: same objects, new args.
    kube.apply(
        a_disagg(
            "llm",
            decode={
                "resources": small_resources(),
                "drain": {"timeoutSeconds": 5},
                "extraArgs": ["--max-num-seqs", "64"],
            },
        )
    )
    updated = kube.wait_for_object(
        "deployment",
        "llm-decode",
        lambda d: "64" in d["spec"]["template"]["spec"]["containers"][0]["args"],
        90,
    )
    assert updated["metadata"]["uid"] == uid
    assert _children(kube) == before  # nothing duplicated, nothing lost

    config = json.loads(kube.get("configmap", "llm-gateway")["data"]["config.json"])  # type: ignore[index]
    assert config["pools"] == {"prefill": "llm-prefill", "decode": "llm-decode"}

    kube.delete(DD, "llm", wait=True)
    kube.wait_for(lambda: not any(_children(kube).values()), 120, "children garbage-collected")


def test_disaggdeployment_reports_ready_when_all_components_are(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.apply(a_disagg("llm"))
    dd = kube.wait_for_object(DD, "llm", lambda o: cond_is(o, "Ready", "True"), 240)
    for type_ in ("PrefillReady", "DecodeReady", "GatewayReady"):
        assert cond_is(dd, type_, "True"), type_
    assert (
        dd["status"]["kvBytesPerToken"] == 131072
    )  # Llama-3.1-8B: 32 layers x 8 KV heads x 128 x 2 x 2
    printed = kube.kubectl("get", DD)
    assert printed.splitlines()[0].split()[:5] == ["NAME", "MODEL", "PREFILL", "DECODE", "READY"], (
        printed
    )


def test_operator_restart_mid_reconcile_converges_without_duplicates(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    if not operator.proc:
        pytest.skip(
            "the operator runs in the cluster (E2E_OPERATOR=pod); restart covered by test_chart"
        )
    kube.apply(a_disagg("llm"))
    kube.wait_for(lambda: kube.get(IP, "llm-prefill"), 60, "first child")
    operator.restart()  # SIGKILL while it is still creating the rest
    for name in ("llm-prefill", "llm-decode", "llm-gateway"):
        kube.wait_for(lambda n=name: kube.get("deployment", n), 120, f"Deployment {name}")
        kube.wait_for(lambda n=name: kube.get("service", n), 60, f"Service {name}")
    children = _children(kube)
    assert children[IP] == ["llm-decode", "llm-prefill"]
    assert children["deployments"] == ["llm-decode", "llm-gateway", "llm-prefill"]
    assert children["services"] == ["llm-decode", "llm-gateway", "llm-prefill"]
    assert operator.alive(), operator.log_tail()

"""Chaos on the local cluster: steady load through the gateway Service while, in turn, a prefill
pod, a decode pod, a gateway pod and the operator are taken away, then the prefill pool is
scaled down under load.  Nothing a client sent may be lost: no non-streamed request fails, and
every stream either completes or ends with an explicit error frame (counted, never silent).
After the drain-aware scale-down no decode worker reports a failed KV transfer.

The decode workers run vLLM's own ``kv_load_failure_policy: fail`` (a failed load is an error or
a silently empty stream there), so any hand-off the chaos breaks has to be caught by the gateway.
Traffic goes only to the gateway Service's ClusterIP and pod IPs of this cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.dataplane_load import GatewayLoad
from e2e.operator_process import OperatorProcess, session_operator
from e2e.test_operator import DD, GATEWAY_IMAGE, IP, a_disagg, cond_is, small_resources
from testbed.cluster.config import Settings
from testbed.cluster.kubectl import Kubectl

pytestmark = pytest.mark.e2e

NAME = "chaos"
GATEWAY = {
    "image": GATEWAY_IMAGE,
    "cpu": "100m",
    "memory": "256Mi",
    "replicas": 2,
    "drain": {"timeoutSeconds": 30},
    "routing": {"selective": {"minUncachedPromptTokens": 64}},
}


@pytest.fixture(scope="module")
def op(cluster: Any, crds: list[str], images: None) -> Iterator[OperatorProcess]:
    """An operator for this module only (or the session's, if one runs): the session fixture
    would keep a cluster-wide operator running into e2e/test_chart.py, whose namespaced-mode
    test requires that nothing else reconciles."""
    shared = session_operator()
    log = Settings.from_env().cache / "logs" / "operator-e2e.log"
    if shared is not None or os.environ.get("E2E_OPERATOR", "process") == "pod":
        yield shared or OperatorProcess(Path(cluster.kubeconfig), log)
        return
    own = OperatorProcess(Path(cluster.kubeconfig), log)
    own.start()
    try:
        yield own
    finally:
        own.stop()


def pool(replicas: int, drain: int = 20) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "resources": small_resources(),
        "drain": {"timeoutSeconds": drain},
    }


def ready_pods(kube: Kubectl, selector: str) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.items("pods", selector)
        if not p["metadata"].get("deletionTimestamp") and cond_is(p, "Ready", "True")
    ]


def wait_ready(
    kube: Kubectl, selector: str, count: int, timeout: float = 180
) -> list[dict[str, Any]]:
    """Until exactly ``count`` pods are Ready and no other pod of the selector remains."""

    def settled() -> list[dict[str, Any]] | None:
        pods = kube.items("pods", selector)
        ready = ready_pods(kube, selector)
        return ready if len(ready) == count == len(pods) else None

    return kube.wait_for(settled, timeout, f"{count} ready pods for {selector}")


def restart_operator(kube: Kubectl, operator: OperatorProcess) -> None:
    """Delete the operator's pod when it runs in the cluster, else kill and restart its process."""
    if os.environ.get("E2E_OPERATOR", "process") == "pod":
        kube.kubectl("delete", "pods", "-A", "-l", "app.kubernetes.io/component=operator",
                     "--wait=false")  # fmt: skip
    else:
        operator.restart()


def failed_transfers(pods: list[dict[str, Any]]) -> float:
    """``vllm:nixl_num_failed_transfers_total`` summed over these workers (read by pod IP)."""
    total = 0.0
    for pod in pods:
        text = httpx.get(f"http://{pod['status']['podIP']}:8000/metrics", timeout=5).text
        total += sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:nixl_num_failed_transfers_total")
        )
    return total


def test_a_data_path_that_loses_nothing(op: OperatorProcess, kube: Kubectl) -> None:
    prefill_sel, decode_sel = f"disagg.dev/pool={NAME}-prefill", f"disagg.dev/pool={NAME}-decode"
    gateway_sel = f"disagg.dev/deployment={NAME},app.kubernetes.io/component=gateway"
    kube.apply(
        a_disagg(
            NAME,
            prefill=pool(2),
            decode=pool(2),
            kvTransfer={"leaseSeconds": 5, "loadFailurePolicy": "fail"},
            gateway=GATEWAY,
        )
    )
    kube.wait_for_object(DD, NAME, lambda o: cond_is(o, "Ready", "True"), 240)
    wait_ready(kube, prefill_sel, 2)
    wait_ready(kube, decode_sel, 2)
    wait_ready(kube, gateway_sel, 2)
    service = kube.get("service", f"{NAME}-gateway")
    assert service is not None
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    assert httpx.get(url + "/ready", timeout=5).status_code == 200  # the Service reaches it

    load = GatewayLoad(lambda: url, "llama", clients=3, stream_clients=2)
    load.start()
    try:
        time.sleep(5)
        for phase, selector, count in (
            ("prefill pod deleted", prefill_sel, 2),
            ("decode pod deleted", decode_sel, 2),
            ("gateway pod deleted", gateway_sel, 2),
        ):
            load.set_phase(phase)
            victim = ready_pods(kube, selector)[0]["metadata"]["name"]
            kube.kubectl("delete", "pod", victim, "--wait=false")
            kube.wait_for(lambda v=victim: kube.get("pod", v) is None, 120, f"{victim} gone")
            wait_ready(kube, selector, count)
            time.sleep(3)
        load.set_phase("operator restarted")
        restart_operator(kube, op)
        time.sleep(8)

        load.set_phase("prefill scaled down")
        decoders = ready_pods(kube, decode_sel)
        before = failed_transfers(decoders)
        kube.kubectl("patch", DD, NAME, "--type=merge", "-p", '{"spec":{"prefill":{"replicas":1}}}')
        kube.wait_for_object(IP, f"{NAME}-prefill", lambda o: o["spec"]["replicas"] == 1, 60)
        wait_ready(kube, prefill_sel, 1)
        time.sleep(3)
        scale_down_failures = failed_transfers(decoders) - before
    finally:
        outcomes = load.stop()

    summary = {f"{p} / {o}": n for (p, o), n in sorted(outcomes.counts.items())}
    print("\nchaos outcomes:", summary, "errors:", outcomes.errors[:10])
    print("failed KV transfers during the scale-down:", scale_down_failures)
    assert outcomes.total("failed") == 0, outcomes.errors
    assert outcomes.total("silent") == 0, outcomes.errors
    assert outcomes.total("ok") > 50 and outcomes.total("complete") > 20, summary
    for phase in ("prefill pod deleted", "decode pod deleted", "gateway pod deleted",
                  "operator restarted", "prefill scaled down"):  # fmt: skip
        assert outcomes.counts[(phase, "ok")] > 0, f"no request served while {phase}"
    assert scale_down_failures == 0
    disaggregated = [r for r in outcomes.routes if r.get("x-disagg-route") == "disaggregated"]
    assert len(disaggregated) > len(outcomes.routes) / 2  # the load did go through P and D

"""Day 2 (issue 21) on the real cluster: status never runs ahead, nothing is stranded when the
operator is gone, a restart rewrites nothing.

Pools and gateways run at 0 replicas here: these tests are about what the operator writes,
not about pods.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from e2e.operator_process import OperatorProcess
from e2e.test_operator import DD, IP, a_disagg
from testbed.cluster.kubectl import Kubectl, WaitTimeout

pytestmark = pytest.mark.e2e

CHILD_KINDS = (
    IP,
    "deployments",
    "services",
    "configmaps",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
)


def idle_disagg(name: str, **spec: Any) -> dict[str, Any]:
    body = a_disagg(name, **spec)
    body["spec"]["prefill"]["replicas"] = 0
    body["spec"]["decode"]["replicas"] = 0
    body["spec"]["gateway"]["replicas"] = 0
    return body


def _generation(kube: Kubectl, name: str) -> int:
    return int(kube.get(DD, name)["metadata"]["generation"])  # type: ignore[index]


def _args(deployment: dict[str, Any]) -> list[str]:
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def _check_children_have(kube: Kubectl, seqs: int, threshold: int) -> None:
    """Every child reflects the spec that asked for ``seqs`` and ``threshold``."""
    pool = kube.get(IP, "llm-decode")
    assert pool is not None
    assert str(seqs) in pool["spec"].get("extraArgs", []), pool["spec"].get("extraArgs")
    assert pool["status"]["observedGeneration"] == pool["metadata"]["generation"]
    deployment = kube.get("deployment", "llm-decode")
    assert deployment is not None and str(seqs) in _args(deployment)
    config = json.loads(kube.get("configmap", "llm-gateway")["data"]["config.json"])  # type: ignore[index]
    assert config["selective"]["minUncachedPromptTokens"] == threshold


def _change_and_wait(kube: Kubectl, i: int) -> float:
    seqs, threshold = 16 + i, 100 + i
    body = idle_disagg("llm")
    body["spec"]["decode"]["extraArgs"] = ["--max-num-seqs", str(seqs)]
    body["spec"]["gateway"]["routing"] = {"selective": {"minUncachedPromptTokens": threshold}}
    started = time.monotonic()
    kube.apply(body)
    generation = _generation(kube, "llm")
    kube.kubectl(
        "wait",
        f"{DD}/llm",
        f"--for=jsonpath={{.status.observedGeneration}}={generation}",
        "--timeout=120s",
    )
    waited = time.monotonic() - started
    _check_children_have(kube, seqs, threshold)
    return waited


def test_observed_generation_is_written_only_once_every_child_has_the_spec(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.apply(idle_disagg("llm"))
    times = [_change_and_wait(kube, i) for i in range(20)]
    median, worst = sorted(times)[10], max(times)
    print(f"spec change -> observedGeneration: median {median:.2f} s, max {worst:.2f} s")
    if not operator.proc:
        return
    operator.extra_args = ("--fault-apply-delay", "1.5")
    operator.restart()
    try:
        slow = [_change_and_wait(kube, 100 + i) for i in range(5)]
        print(f"with 1.5 s injected before each write: max {max(slow):.2f} s")
        assert min(slow) >= 1.5, "the injected delay was not in the path"
    finally:
        operator.extra_args = ()
        operator.restart()


def test_deleting_while_the_operator_is_stopped_completes(
    operator: OperatorProcess, kube: Kubectl, cluster_kube: Kubectl, namespace: str
) -> None:
    if not operator.proc:
        pytest.skip("the operator runs in the cluster (E2E_OPERATOR=pod)")
    for name in ("a", "b"):
        kube.apply(idle_disagg(name))
    for name in ("a", "b"):
        kube.wait_for(lambda n=name: kube.get("configmap", f"{n}-gateway"), 60, f"{name} children")
    for obj in kube.items(DD) + kube.items(IP):
        assert not obj["metadata"].get("finalizers"), obj["metadata"]
    operator.stop()
    try:
        started = time.monotonic()
        kube.delete(DD, "a", wait=False)
        kube.wait_for(lambda: kube.get(DD, "a") is None, 60, "DisaggDeployment a deleted")
        kube.wait_for(
            lambda: (
                not any(
                    o["metadata"]["name"].startswith("a-")
                    for k in CHILD_KINDS
                    for o in kube.items(k)
                )
            ),
            60,
            "a's children garbage-collected",
        )
        print(f"DisaggDeployment and children gone {time.monotonic() - started:.1f} s after delete")
        started = time.monotonic()
        cluster_kube.delete("namespace", namespace, wait=False)
        cluster_kube.wait_for(
            lambda: cluster_kube.get("namespace", namespace) is None, 60, "namespace deleted"
        )
        print(f"namespace gone {time.monotonic() - started:.1f} s after delete")
    finally:
        operator.start()


def test_the_finalizer_of_earlier_versions_is_removed(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    old = idle_disagg("old")
    old["metadata"]["finalizers"] = ["disagg.dev/finalizer"]
    kube.apply(old)
    kube.wait_for_object(DD, "old", lambda o: not o["metadata"].get("finalizers"), 60)
    kube.delete(DD, "old", wait=True)


def _versions(kube: Kubectl) -> dict[str, str]:
    out = {}
    for kind in (DD, *CHILD_KINDS):
        for obj in kube.items(kind):
            out[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return out


def _stable_versions(kube: Kubectl) -> dict[str, str]:
    """resourceVersions of everything, once none has changed for 3 s."""
    return kube.wait_unchanged(lambda: _versions(kube), 3, 60)


def test_an_operator_restart_writes_nothing(
    operator: OperatorProcess, kube: Kubectl, cluster_kube: Kubectl, namespace: str
) -> None:
    if not operator.proc:
        pytest.skip("the operator runs in the cluster (E2E_OPERATOR=pod)")
    for name in ("r1", "r2", "r3"):
        kube.apply(idle_disagg(name))
    for name in ("r1", "r2", "r3"):
        kube.wait_for_object(
            DD,
            name,
            lambda o: o.get("status", {}).get("observedGeneration") == o["metadata"]["generation"],
            90,
        )

    # Other tests' DisaggDeployments and pools would be resumed too and must not count here.  A
    # namespace being deleted keeps them until the namespace controller's next pass, which
    # waits out its pods' grace period (a worker's drain timeout), so allow for that.
    def foreign() -> list[str]:
        out = json.loads(cluster_kube.kubectl("get", f"{DD},{IP}", "-A", "-o", "json"))
        return [
            f"{o['kind']} {o['metadata']['namespace']}/{o['metadata']['name']}"
            for o in out.get("items", [])
            if o["metadata"]["namespace"] != namespace
        ]

    left: list[str] = []

    def none_foreign() -> bool:
        left[:] = foreign()
        return not left

    waited = time.monotonic()
    try:
        cluster_kube.wait_for(none_foreign, 400, "no other test's DisaggDeployment or pool left")
    except WaitTimeout as err:
        pytest.fail(f"{err}; still there: {left[:5]}")
    print(f"other tests' objects gone after {time.monotonic() - waited:.1f} s")
    before = _stable_versions(kube)
    operator.restart()
    objects = 3 * 3  # each DisaggDeployment and its two pools

    def resumed() -> dict[str, float] | None:
        m = operator.metrics() or {}
        done = (
            m.get("disagg_operator_reconciles_total", 0) >= objects
            and m.get("disagg_operator_queue_depth") == 0
            and m.get("disagg_operator_in_progress") == 0
        )
        return m if done else None

    stats = kube.wait_for(resumed, 60, "the operator resumed every object")
    requests = {k: v for k, v in stats.items() if k.startswith("disagg_operator_api_requests")}
    print(f"after restart: {stats['disagg_operator_reconciles_total']:.0f} reconciles, {requests}")
    assert sum(requests.values()) == 0, requests
    assert _versions(kube) == before

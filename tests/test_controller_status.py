"""Status and conditions computed from what the cluster reports (pure functions)."""

from __future__ import annotations

from typing import Any

from disagg.api import DisaggDeploymentSpec, InferencePoolSpec
from disagg.controller.conditions import merge_conditions
from disagg.controller.status import disagg_status, kv_estimates, pool_status


def _pool(**over: Any) -> InferencePoolSpec:
    return InferencePoolSpec.model_validate({"role": "prefill", "model": {"name": "m"}, **over})


def _conds(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


def test_unschedulable_pool_says_why_with_the_schedulers_message() -> None:
    pending = {
        "metadata": {"name": "p-abc"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    deployment = {"status": {"replicas": 1, "updatedReplicas": 1}}
    fields, conds = pool_status(_pool(), 1, deployment, [pending], "disagg.dev/pool=p")
    c = _conds(conds)
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "Unschedulable"
    assert c["Degraded"]["status"] == "True"
    assert "Insufficient nvidia.com/gpu" in c["Degraded"]["message"]
    assert fields["selector"] == "disagg.dev/pool=p"


def test_ready_pool() -> None:
    deployment = {"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}}
    fields, conds = pool_status(_pool(), 2, deployment, [], "s")
    c = _conds(conds)
    assert c["Ready"]["status"] == "True"
    assert c["Progressing"]["status"] == "False"
    assert c["RDMAReady"]["reason"] == "RDMADisabled"  # TCP is surfaced, not hidden
    assert fields["readyReplicas"] == 2


def test_transition_time_kept_while_status_is_unchanged() -> None:
    old = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "X",
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        }
    ]
    new = merge_conditions(
        old, [{"type": "Ready", "status": "True", "reason": "Y", "message": ""}], 3
    )
    assert new[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert new[0]["observedGeneration"] == 3
    flipped = merge_conditions(
        old, [{"type": "Ready", "status": "False", "reason": "Z", "message": ""}], 3
    )
    assert flipped[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_disagg_status_reports_kv_arithmetic_and_component_readiness() -> None:
    spec = DisaggDeploymentSpec.model_validate(
        {
            "model": {"name": "meta-llama/Llama-3.1-70B-Instruct"},
            "rdma": {"enabled": True, "resourceName": "rdma/ib", "linkGbps": 100},
        }
    )
    ready_pool = {
        "spec": {"replicas": 1},
        "status": {
            "readyReplicas": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "WorkersReady"}],
        },
    }
    fields, conds = disagg_status(
        "d", "ns", spec, {"prefill": ready_pool, "decode": None}, None, {"prefill": 1, "decode": 1}
    )
    c = _conds(conds)
    assert c["PrefillReady"]["status"] == "True"
    assert c["DecodeReady"]["status"] == "False"
    assert c["GatewayReady"]["status"] == "False"
    assert c["Ready"]["status"] == "False" and "DecodeReady" in c["Ready"]["message"]
    assert fields["kvBytesPerToken"] == 327680
    assert 100 < fields["estimatedTransferMs"] < 115  # 1.34 GB at 100 Gb/s
    assert fields["gateway"]["endpoint"] == "http://d-gateway.ns.svc:8000"


def test_unknown_model_gives_no_kv_estimate() -> None:
    spec = DisaggDeploymentSpec.model_validate({"model": {"name": "acme/secret-model"}})
    assert kv_estimates(spec) == {}

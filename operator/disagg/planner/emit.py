"""A DisaggDeployment suggestion from a plan, as a plain dict (the CLI prints it as YAML).

The planner stays below the API layer in spirit -- it builds the wire form (camelCase keys, as
``kubectl apply`` takes it) instead of importing :mod:`disagg.api`, so the planner has no
pydantic dependency and the suggestion can be edited before it is applied.  A unit test
validates the result against the API models, so the two cannot drift silently.

What the plan decides goes in (replica counts, tensor parallelism, RDMA transport and link,
the selective-disaggregation threshold, a P:D ratio guard around the planned ratio, the GPU
budget); everything else is left to the API's defaults.
"""

from __future__ import annotations

import math
import re
from typing import Any

from disagg.planner.models import HF_REPOS
from disagg.planner.plan import Plan

API_VERSION = "disagg.dev/v1alpha1"

#: Device-plugin resource a transport's NICs are usually advertised as.
RDMA_RESOURCES = {"ib": "rdma/ib", "roce": "rdma/roce_gdr", "efa": "vpc.amazonaws.com/efa"}


def default_name(plan: Plan) -> str:
    """A DNS-1035 label (<= 52 characters) from the model name."""
    label = re.sub(r"[^a-z0-9-]+", "-", plan.model.name.lower()).strip("-")
    label = re.sub(r"^[^a-z]+", "", label) or "model"
    return label[:52].rstrip("-")


def _autoscaling(replicas: int, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "enabled": True,
        "minReplicas": max(1, math.ceil(replicas / 2)),
        "maxReplicas": max(2, 2 * replicas),
        "metrics": metrics,
    }


def deployment_manifest(plan: Plan, name: str | None = None) -> dict[str, Any]:
    """The suggested DisaggDeployment (``disagg.dev/v1alpha1``) for ``plan``."""
    d = plan.deployment
    model: dict[str, Any] = {"name": HF_REPOS.get(plan.model.name, plan.model.name)}
    if plan.model.name in HF_REPOS:
        model["architecture"] = plan.model.name
    rdma: dict[str, Any] = {"enabled": d.is_rdma, "linkGbps": d.link_gbps}
    if d.is_rdma:
        rdma.update(transport=d.transport, resourceName=RDMA_RESOURCES[d.transport], count=1)
    else:
        rdma["transport"] = "tcp"
    ratio = plan.prefill.replicas / max(plan.decode.replicas, 1)
    spec: dict[str, Any] = {
        "model": model,
        "engine": {
            "maxNumSeqs": d.max_num_seqs,
            "gpuMemoryUtilization": d.gpu_memory_utilization,
        },
        "kvTransfer": {"connector": "NixlConnector"},
        "rdma": rdma,
        "prefill": {
            "replicas": plan.prefill.replicas,
            "parallelism": {"tensor": plan.prefill.tensor_parallel},
            "autoscaling": _autoscaling(
                plan.prefill.replicas,
                [
                    {"name": "gatewayQueueDepth", "target": 4},
                    {"name": "waitingRequests", "target": 2},
                ],
            ),
        },
        "decode": {
            "replicas": plan.decode.replicas,
            "parallelism": {"tensor": plan.decode.tensor_parallel},
            "autoscaling": _autoscaling(
                plan.decode.replicas,
                [{"name": "waitingRequests", "target": 2}, {"name": "kvCacheUsage", "target": 0.8}],
            ),
        },
        "gateway": {
            "routing": {"selective": {"minUncachedPromptTokens": d.min_uncached_prompt_tokens}}
        },
        "scaling": {
            "prefillToDecodeRatio": {"min": round(ratio / 4, 3), "max": round(ratio * 4, 3)},
        },
    }
    if d.gpu_budget:
        spec["scaling"]["gpuBudget"] = d.gpu_budget
    return {
        "apiVersion": API_VERSION,
        "kind": "DisaggDeployment",
        "metadata": {"name": name or default_name(plan)},
        "spec": spec,
    }


def manifest_comment(plan: Plan) -> str:
    """Lines (``#``-prefixed) that say where the suggestion came from and what the verdict is."""
    lines = [
        f"Suggested by `disagg plan` for {plan.model.name} on {plan.gpu.name}: "
        f"{plan.workload.arrival_rate:g} req/s, {plan.workload.prompt_tokens} prompt / "
        f"{plan.workload.output_tokens} output tokens, TTFT p99 {plan.slo.ttft_p99_ms:g} ms, "
        f"ITL p99 {plan.slo.itl_p99_ms:g} ms.",
        f"Verdict: {plan.verdict} ({plan.verdict_reason}).",
    ]
    if plan.verdict == "stay-aggregated":
        agg = plan.aggregated
        lines.append(
            f"An aggregated InferencePool of {agg.replicas} x tp={agg.tensor_parallel} "
            f"({agg.gpus} GPUs) is the planner's recommendation; this is the disaggregated "
            "alternative for comparison."
        )
    return "\n".join(f"# {line}" for line in lines)

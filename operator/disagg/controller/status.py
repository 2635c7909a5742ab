"""Status of pools and DisaggDeployments from what the cluster reports.

Pure functions: the reconciler reads the Deployment, its pods and the child
pools, and these turn them into status fields and conditions.  A pool that
cannot be scheduled (not enough GPUs or RDMA devices) says so with the
scheduler's own message instead of sitting silently at 0/N.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePoolSpec
from disagg.controller.conditions import Condition, Reason, Type, condition, find, is_true
from disagg.planner.models import MODELS, kv_bytes_per_token, preset_for_model_name
from disagg.planner.roofline import transfer_time_s

TYPICAL_PROMPT_TOKENS = 4096
_POD_NAME = re.compile(r'pods? "[^"]*" (?:is|are) forbidden')

_TCP_WARNING = (
    "RDMA is off: NIXL moves KV over TCP, expect TTFT 10-40x worse than over RDMA; "
    "set spec.rdma for production"
)


def _creation_problem(deployment: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) when the ReplicaSet cannot create pods at all: Pod Security or
    another admission plugin forbids them, or a quota is exhausted (``ReplicaFailure``,
    which the Deployment controller copies from the ReplicaSet's ``FailedCreate``)."""
    for cond in (deployment or {}).get("status", {}).get("conditions", []):
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            message = (cond.get("message") or "pods cannot be created").strip().splitlines()[0]
            # Each retry names a new random pod: drop the name so the message (and so the
            # Event, one per distinct message) stays the same while the cause does.
            return Reason.PODS_FORBIDDEN, _POD_NAME.sub("pods are forbidden", message)
    return None


def _pod_problems(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of the first pod that cannot run, if any."""
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        status = pod.get("status", {})
        for cond in status.get("conditions", []):
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return "Unschedulable", cond.get("message") or "pod cannot be scheduled"
        for cs in status.get("containerStatuses", []):
            waiting = cs.get("state", {}).get("waiting") or {}
            if waiting.get("reason") in (
                "CrashLoopBackOff",
                "ErrImagePull",
                "ImagePullBackOff",
                "CreateContainerConfigError",
                "InvalidImageName",
            ):
                name = pod["metadata"]["name"]
                detail = waiting.get("message") or ""
                return waiting["reason"], f"pod {name}: {waiting['reason']} {detail}".strip()
    return None


def pool_status(
    spec: InferencePoolSpec,
    desired: int,
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    selector: str,
    clamp_reason: str | None = None,
) -> tuple[dict[str, Any], list[Condition]]:
    """Status fields and conditions of a pool whose Deployment is set to ``desired``."""
    dstatus = (deployment or {}).get("status", {})
    replicas = dstatus.get("replicas", 0)
    ready = dstatus.get("readyReplicas", 0)
    updated = dstatus.get("updatedReplicas", 0)
    fields = {
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated,
        "selector": selector,
        "endpoints": ready,
    }
    problem = _creation_problem(deployment) or _pod_problems(pods)
    conds: list[Condition] = []
    if desired == 0:
        conds.append(
            condition(Type.READY, True, Reason.SCALED_TO_ZERO, "the pool has no workers by request")
        )
    elif ready >= desired:
        conds.append(
            condition(Type.READY, True, Reason.WORKERS_READY, f"{ready}/{desired} workers ready")
        )
    else:
        reason = problem[0] if problem else Reason.WORKERS_NOT_READY
        conds.append(condition(Type.READY, False, reason, f"{ready}/{desired} workers ready"))
    progressing = updated < desired or ready < desired or replicas > desired
    conds.append(
        condition(
            Type.PROGRESSING,
            progressing,
            Reason.ROLLING_OUT if progressing else Reason.STABLE,
            f"{updated} updated, {ready} ready, {desired} desired",
        )
    )
    if problem:
        conds.append(condition(Type.DEGRADED, True, problem[0], problem[1]))
    elif clamp_reason:
        conds.append(condition(Type.DEGRADED, False, Reason.SCALING_LIMITED, clamp_reason))
    else:
        conds.append(condition(Type.DEGRADED, False, Reason.AS_EXPECTED))
    if spec.rdma.enabled:
        conds.append(
            condition(
                Type.RDMA_READY,
                ready > 0,
                Reason.DEVICES_ALLOCATED if ready > 0 else Reason.NO_READY_WORKER,
                f"{spec.rdma.count} x {spec.rdma.resource_name} per worker, "
                f"transport {spec.rdma.transport}",
            )
        )
    else:
        conds.append(condition(Type.RDMA_READY, False, Reason.RDMA_DISABLED, _TCP_WARNING))
    return fields, conds


def guess_architecture(spec: DisaggDeploymentSpec) -> str | None:
    """The planner preset for the model: ``model.architecture``, else guessed from its name."""
    return preset_for_model_name(spec.model.architecture or spec.model.name)


def kv_estimates(spec: DisaggDeploymentSpec) -> dict[str, Any]:
    """KV bytes per token and the transfer time of a typical prompt at the link speed."""
    arch = guess_architecture(spec)
    if arch is None:
        return {}
    per_token = kv_bytes_per_token(MODELS[arch])
    gbps = spec.rdma.link_gbps if spec.rdma.enabled else 25.0  # a typical pod network
    ms = transfer_time_s(per_token * TYPICAL_PROMPT_TOKENS, gbps) * 1000
    return {"kvBytesPerToken": per_token, "estimatedTransferMs": round(ms, 2)}


def disagg_status(
    name: str,
    namespace: str,
    spec: DisaggDeploymentSpec,
    pools: dict[str, dict[str, Any] | None],
    gateway: dict[str, Any] | None,
    desired: dict[str, int],
) -> tuple[dict[str, Any], list[Condition]]:
    """Status fields and conditions of a DisaggDeployment from its children."""
    fields: dict[str, Any] = {}
    conds: list[Condition] = []
    for role, type_ in (("prefill", Type.PREFILL_READY), ("decode", Type.DECODE_READY)):
        pool = pools.get(role)
        pstatus = (pool or {}).get("status", {})
        requested = (pool or {}).get("spec", {}).get("replicas")
        fields[role] = {
            "desired": desired.get(role),
            "requested": requested,
            "ready": pstatus.get("readyReplicas", 0),
        }
        if pool is None:
            conds.append(
                condition(type_, False, Reason.POOL_MISSING, f"{name}-{role} not created yet")
            )
        else:
            pconds = pstatus.get("conditions", [])
            ready = is_true(pconds, Type.READY)
            reason = next(
                (c.get("reason", "") for c in pconds if c.get("type") == Type.READY), Reason.PENDING
            )
            conds.append(
                condition(type_, ready, reason or Reason.PENDING, f"{fields[role]['ready']} ready")
            )
    gstatus = (gateway or {}).get("status", {})
    gready = gstatus.get("readyReplicas", 0)
    port = spec.gateway.port
    fields["gateway"] = {
        "endpoint": f"http://{name}-gateway.{namespace}.svc:{port}",
        "ready": gready,
    }
    gateway_ok = gateway is not None and gready >= min(1, spec.gateway.replicas)
    conds.append(
        condition(
            Type.GATEWAY_READY,
            gateway_ok,
            Reason.GATEWAY_AVAILABLE if gateway_ok else Reason.GATEWAY_NOT_READY,
            f"{gready}/{spec.gateway.replicas} gateway pods ready",
        )
    )
    all_ready = all(c["status"] == "True" for c in conds)
    not_ready = [c["type"] for c in conds if c["status"] != "True"]
    conds.insert(
        0,
        condition(
            Type.READY,
            all_ready,
            Reason.ALL_COMPONENTS_READY if all_ready else Reason.COMPONENTS_NOT_READY,
            "prefill, decode and gateway are ready"
            if all_ready
            else "not ready: " + ", ".join(not_ready),
        ),
    )
    if spec.rdma.enabled:
        conds.append(
            condition(
                Type.RDMA_READY,
                True,
                Reason.RDMA_CONFIGURED,
                f"{spec.rdma.count} x {spec.rdma.resource_name} per worker, "
                f"transport {spec.rdma.transport}, {spec.rdma.link_gbps:g} Gb/s",
            )
        )
    else:
        conds.append(condition(Type.RDMA_READY, False, Reason.RDMA_DISABLED, _TCP_WARNING))
    degraded = [
        (role, found)
        for role, pool in pools.items()
        if (found := find((pool or {}).get("status", {}).get("conditions"), Type.DEGRADED))
        and found.get("status") == "True"
    ]
    if degraded:
        role, found = degraded[0]
        conds.append(
            condition(
                Type.DEGRADED,
                True,
                found.get("reason") or Reason.WORKERS_NOT_READY,
                f"{role} pool: {found.get('message', '')}",
            )
        )
    else:
        conds.append(condition(Type.DEGRADED, False, Reason.AS_EXPECTED))
    fields.update(kv_estimates(spec))
    return fields, conds


#: Window over which the routing decisions are counted.
WINDOW = "5m"
#: Below this share of disaggregated requests, disaggregation is not effective.
MIN_DISAGGREGATED_SHARE = 0.05
#: Above this share of fallbacks among P/D attempts, KV handoffs are failing.
MAX_FALLBACK_SHARE = 0.5


@dataclass(frozen=True)
class Decisions:
    """The gateway's routing decisions over :data:`WINDOW`, summed over its pods."""

    disaggregated: float
    decode_only: float
    fallback: float

    @property
    def total(self) -> float:
        return self.disaggregated + self.decode_only + self.fallback


def effectiveness(
    decisions: Decisions | None, configured: bool = True
) -> tuple[float | None, Condition]:
    """The disaggregated share and the ``DisaggregationEffective`` condition."""
    type_ = Type.DISAGGREGATION_EFFECTIVE
    if decisions is None:
        why = (
            "Prometheus did not answer"
            if configured
            else "the operator runs without --prometheus-url, so it cannot tell"
        )
        return None, condition(type_, None, Reason.METRICS_UNAVAILABLE, why)
    if decisions.total < 1:
        return None, condition(type_, None, Reason.NO_TRAFFIC, f"no requests in the last {WINDOW}")
    share = decisions.disaggregated / decisions.total
    attempted = decisions.disaggregated + decisions.fallback
    if attempted >= 1 and decisions.fallback / attempted > MAX_FALLBACK_SHARE:
        return share, condition(
            type_,
            False,
            Reason.KV_HANDOFF_FAILING,
            f"{decisions.fallback:.0f} of {attempted:.0f} P/D attempts fell back to "
            f"decode-local prefill in the last {WINDOW}",
        )
    if share < MIN_DISAGGREGATED_SHARE:
        return share, condition(
            type_,
            False,
            Reason.MOSTLY_DECODE_ONLY,
            f"{share:.0%} of requests disaggregated in the last {WINDOW}: prompts are below "
            "gateway.routing.selective.minUncachedPromptTokens (or cached)",
        )
    return share, condition(
        type_,
        True,
        Reason.DISAGGREGATING,
        f"{share:.0%} of requests went prefill -> decode in the last {WINDOW}",
    )

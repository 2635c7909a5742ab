"""Status of pools and DisaggDeployments from what the cluster reports.

Pure functions: the reconciler reads the Deployment, its pods and the child
pools, and these turn them into status fields and conditions.  A pool that
cannot be scheduled (not enough GPUs or RDMA devices) says so with the
scheduler's own message instead of sitting silently at 0/N.
"""

from __future__ import annotations

from typing import Any

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePoolSpec
from disagg.controller.conditions import Condition, condition, is_true
from disagg.planner.models import MODELS, kv_bytes_per_token, preset_for_model_name
from disagg.planner.roofline import transfer_time_s

TYPICAL_PROMPT_TOKENS = 4096

_TCP_WARNING = (
    "RDMA is off: NIXL moves KV over TCP, expect TTFT 10-40x worse than over RDMA; "
    "set spec.rdma for production"
)


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
    problem = _pod_problems(pods)
    conds: list[Condition] = []
    if desired == 0:
        conds.append(condition("Ready", True, "ScaledToZero", "the pool has no workers by request"))
    elif ready >= desired:
        conds.append(condition("Ready", True, "WorkersReady", f"{ready}/{desired} workers ready"))
    else:
        reason = problem[0] if problem else "WorkersNotReady"
        conds.append(condition("Ready", False, reason, f"{ready}/{desired} workers ready"))
    progressing = updated < desired or ready < desired or replicas > desired
    conds.append(
        condition(
            "Progressing",
            progressing,
            "RollingOut" if progressing else "Stable",
            f"{updated} updated, {ready} ready, {desired} desired",
        )
    )
    if problem:
        conds.append(condition("Degraded", True, problem[0], problem[1]))
    elif clamp_reason:
        conds.append(condition("Degraded", False, "ScalingLimited", clamp_reason))
    else:
        conds.append(condition("Degraded", False, "AsExpected"))
    if spec.rdma.enabled:
        conds.append(
            condition(
                "RDMAReady",
                ready > 0,
                "DevicesAllocated" if ready > 0 else "NoReadyWorker",
                f"{spec.rdma.count} x {spec.rdma.resource_name} per worker, "
                f"transport {spec.rdma.transport}",
            )
        )
    else:
        conds.append(condition("RDMAReady", False, "RDMADisabled", _TCP_WARNING))
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
    for role, type_ in (("prefill", "PrefillReady"), ("decode", "DecodeReady")):
        pool = pools.get(role)
        pstatus = (pool or {}).get("status", {})
        requested = (pool or {}).get("spec", {}).get("replicas")
        fields[role] = {
            "desired": desired.get(role),
            "requested": requested,
            "ready": pstatus.get("readyReplicas", 0),
        }
        if pool is None:
            conds.append(condition(type_, False, "PoolMissing", f"{name}-{role} not created yet"))
        else:
            pconds = pstatus.get("conditions", [])
            ready = is_true(pconds, "Ready")
            reason = next(
                (c.get("reason", "") for c in pconds if c.get("type") == "Ready"), "Pending"
            )
            conds.append(
                condition(type_, ready, reason or "Pending", f"{fields[role]['ready']} ready")
            )
    gstatus = (gateway or {}).get("status", {})
    gready = gstatus.get("readyReplicas", 0)
    port = spec.gateway.port
    fields["gateway"] = {
        "endpoint": f"http://{name}-gateway.{namespace}.svc:{port}",
        "ready": gready,
    }
    gateway_ok = gateway is not None and gready >= 1
    conds.append(
        condition(
            "GatewayReady",
            gateway_ok,
            "GatewayAvailable" if gateway_ok else "GatewayNotReady",
            f"{gready}/{spec.gateway.replicas} gateway pods ready",
        )
    )
    all_ready = all(c["status"] == "True" for c in conds)
    not_ready = [c["type"] for c in conds if c["status"] != "True"]
    conds.insert(
        0,
        condition(
            "Ready",
            all_ready,
            "AllComponentsReady" if all_ready else "ComponentsNotReady",
            "prefill, decode and gateway are ready"
            if all_ready
            else "not ready: " + ", ".join(not_ready),
        ),
    )
    if spec.rdma.enabled:
        conds.append(
            condition(
                "RDMAReady",
                True,
                "RDMAConfigured",
                f"{spec.rdma.count} x {spec.rdma.resource_name} per worker, "
                f"transport {spec.rdma.transport}, {spec.rdma.link_gbps:g} Gb/s",
            )
        )
    else:
        conds.append(condition("RDMAReady", False, "RDMADisabled", _TCP_WARNING))
    fields.update(kv_estimates(spec))
    return fields, conds

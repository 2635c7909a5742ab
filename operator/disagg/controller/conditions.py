"""Conditions in the Kubernetes style, their types and reasons, computed without I/O.

Every condition type and reason the operator writes is a constant here, so a user
can grep one file for what ``kubectl describe`` may show.  ``merge_conditions``
keeps ``lastTransitionTime`` while a condition's status does not change, so a
status recomputed on every reconcile does not churn; reasons are CamelCase words a
user can search for, messages say what to do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Condition = dict[str, Any]


class Type:
    """Condition types."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    RDMA_READY = "RDMAReady"
    PREFILL_READY = "PrefillReady"
    DECODE_READY = "DecodeReady"
    GATEWAY_READY = "GatewayReady"
    DISAGGREGATION_EFFECTIVE = "DisaggregationEffective"
    SCALING_LIMITED = "ScalingLimited"


class Reason:
    """Condition reasons (and the Event reasons of the same failures)."""

    # Healthy states.
    WORKERS_READY = "WorkersReady"
    SCALED_TO_ZERO = "ScaledToZero"
    WORKERS_NOT_READY = "WorkersNotReady"
    ROLLING_OUT = "RollingOut"
    STABLE = "Stable"
    AS_EXPECTED = "AsExpected"
    ALL_COMPONENTS_READY = "AllComponentsReady"
    COMPONENTS_NOT_READY = "ComponentsNotReady"
    POOL_MISSING = "PoolMissing"
    PENDING = "Pending"
    GATEWAY_AVAILABLE = "GatewayAvailable"
    GATEWAY_NOT_READY = "GatewayNotReady"
    DEVICES_ALLOCATED = "DevicesAllocated"
    NO_READY_WORKER = "NoReadyWorker"
    RDMA_DISABLED = "RDMADisabled"
    RDMA_CONFIGURED = "RDMAConfigured"
    GUARDS_APPLIED = "GuardsApplied"
    WITHIN_BOUNDS = "WithinBounds"
    SCALING_LIMITED = "ScalingLimited"
    # DisaggregationEffective.
    DISAGGREGATING = "Disaggregating"
    MOSTLY_DECODE_ONLY = "MostlyDecodeOnly"
    KV_HANDOFF_FAILING = "KVHandoffFailing"
    NO_TRAFFIC = "NoTraffic"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    # Failure classes: each is one Degraded reason and one Warning Event reason.
    INVALID_SPEC = "InvalidSpec"
    APPLY_REJECTED = "ApplyRejected"
    SERVER_ERROR = "ServerError"
    MISSING_API = "MissingAPI"
    FORBIDDEN = "Forbidden"
    NAME_CONFLICT = "NameConflict"
    UNSAFE_POD_TEMPLATE = "UnsafePodTemplate"
    PODS_FORBIDDEN = "PodsForbidden"
    UNSCHEDULABLE = "Unschedulable"
    CRASH_LOOP = "CrashLoopBackOff"


#: Reasons of Degraded=True that stop the operator from changing children until the spec
#: (or the cluster) changes; they are the failure classes of the status contract.
FAILURE_REASONS = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.APPLY_REJECTED,
        Reason.SERVER_ERROR,
        Reason.MISSING_API,
        Reason.FORBIDDEN,
        Reason.NAME_CONFLICT,
        Reason.UNSAFE_POD_TEMPLATE,
    }
)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool | None, reason: str, message: str = "") -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": type_, "status": status, "reason": reason, "message": message}


def merge_conditions(
    old: list[Condition], new: list[Condition], generation: int | None, stamp: str | None = None
) -> list[Condition]:
    """New conditions, each keeping its old transition time when its status is unchanged;
    ``stamp`` (default: now) for the ones that changed."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        kept = (
            before.get("lastTransitionTime")
            if before and before.get("status") == cond["status"]
            else None
        )
        merged = {**cond, "lastTransitionTime": kept or stamp or now()}
        if generation is not None:
            merged["observedGeneration"] = generation
        out.append(merged)
    return out


def find(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[Condition] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return bool(found and found.get("status") == "True")

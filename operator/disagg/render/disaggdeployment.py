"""A DisaggDeployment's children: two InferencePools and the gateway.

Shared settings (model, engine, KV transfer, RDMA) are declared once on the
DisaggDeployment and copied into both pools; each pool then renders its own
workers.  A child pool's ``spec.replicas`` belongs to its autoscaler once
autoscaling is on, so a re-render keeps the live value (clamped to the bounds)
instead of resetting it to the DisaggDeployment's initial count.
"""

from __future__ import annotations

from typing import Any

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePoolSpec, PoolSection
from disagg.api.scorers import needs_kv_events
from disagg.api.versions import API_VERSION
from disagg.render import names
from disagg.render.gateway import render_gateway_children
from disagg.render.metadata import object_meta
from disagg.render.pool import requested_replicas
from disagg.render.slo import slo_metrics
from disagg.render.vllm import kv_hash_seed

ROLES = ("prefill", "decode")


def section(spec: DisaggDeploymentSpec, role: str) -> PoolSection:
    return spec.prefill if role == "prefill" else spec.decode


def child_pool_spec(
    spec: DisaggDeploymentSpec,
    role: str,
    current_replicas: int | None = None,
    hash_seed: str | None = None,
) -> InferencePoolSpec:
    """The spec of the ``role`` pool: shared settings plus that side's section (its autoscaling
    metrics derived from ``spec.slo`` when it names none)."""
    side = section(spec, role)
    replicas = requested_replicas(side)
    if side.autoscaling.enabled:
        if current_replicas is not None:
            replicas = current_replicas
        replicas = max(side.autoscaling.min_replicas, min(side.autoscaling.max_replicas, replicas))
    routing = spec.gateway.routing
    scorers = routing.prefill_scorers if role == "prefill" else routing.decode_scorers
    events = needs_kv_events([s.type for s in scorers if s.weight])
    autoscaling = side.autoscaling.model_dump()
    if not side.autoscaling.metrics and (derived := slo_metrics(spec, role)) is not None:
        autoscaling["metrics"] = [m.model_dump() for m in derived]
    return InferencePoolSpec.model_validate(
        {
            **side.model_dump(),
            "autoscaling": autoscaling,
            # the gateway follows this pool's KV events when it routes it precisely
            "kv_events": {"enabled": events, "hash_seed": hash_seed if events else None},
            "replicas": replicas,
            "role": role,
            "model": spec.model.model_dump(),
            "engine": spec.engine.model_dump(),
            "kv_transfer": spec.kv_transfer.model_dump(),
            "rdma": spec.rdma.model_dump(),
        }
    )


def render_child_pool(
    name: str,
    namespace: str,
    spec: DisaggDeploymentSpec,
    role: str,
    *,
    current_replicas: int | None = None,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pool = names.pool_name(name, role)
    return {
        "apiVersion": API_VERSION,
        "kind": "InferencePool",
        "metadata": object_meta(pool, namespace, names.pool_labels(pool, role, name), owner),
        "spec": child_pool_spec(
            spec, role, current_replicas, kv_hash_seed(name, namespace, owner)
        ).to_wire(),
    }


def render_disaggdeployment_children(
    name: str,
    namespace: str,
    spec: DisaggDeploymentSpec,
    *,
    current_replicas: dict[str, int | None] | None = None,
    owner: dict[str, Any] | None = None,
    gateway_cluster_role: str | None = None,
) -> list[dict[str, Any]]:
    """Both child InferencePools, then the gateway's objects (``gateway_cluster_role``:
    see :func:`render_gateway_children`)."""
    current = current_replicas or {}
    pools = [
        render_child_pool(
            name, namespace, spec, role, current_replicas=current.get(role), owner=owner
        )
        for role in ROLES
    ]
    return pools + render_gateway_children(
        name, namespace, spec, owner, cluster_role=gateway_cluster_role
    )

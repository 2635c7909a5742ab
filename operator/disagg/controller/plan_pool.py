"""plan_pool(): one reconcile of an InferencePool, decided without the cluster.

The pool renders its Deployment, headless Service, disruption budget and autoscaler;
when it is a DisaggDeployment's child, the parent's guards (P:D ratio, GPU budget)
bound the replicas its Deployment gets, given what the sibling pool asks for.
"""

from __future__ import annotations

from pydantic import ValidationError

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePoolSpec
from disagg.api.versions import API_VERSION
from disagg.controller.children import controlled_by, diff_children
from disagg.controller.children import prunes as find_prunes
from disagg.controller.conditions import (
    Type,
    find,
)
from disagg.controller.plan import (
    base_status,
    conflicted,
    degraded_events,
    held_back,
    parse_spec,
    pod_deletion_costs,
    pod_template_violations,
    status_update,
    user_field,
)
from disagg.controller.plantypes import (
    POOL_CHILD_KINDS,
    POOL_PRUNABLE,
    Body,
    EventSpec,
    Observed,
    Plan,
    PlanConfig,
)
from disagg.controller.status import pool_status
from disagg.render import names
from disagg.render.disaggdeployment import section
from disagg.render.guards import apply_guards
from disagg.render.metadata import owner_reference
from disagg.render.pool import (
    render_pool_children,
    requested_replicas,
)


def plan_pool(o: Observed, cfg: PlanConfig) -> Plan:
    """The plan for one InferencePool."""
    spec = parse_spec(o, InferencePoolSpec, cfg)
    if isinstance(spec, Plan):
        return spec
    base = base_status(o)
    labels = o.obj["metadata"].get("labels") or {}
    deployment = labels.get(names.LABEL_DEPLOYMENT)
    replicas, clamp_reason = requested_replicas(spec), None
    parent = o.parent if o.parent and controlled_by(o.obj, o.parent["metadata"]["uid"]) else None
    events: list[EventSpec] = []
    if parent is not None:
        try:
            dd_spec: DisaggDeploymentSpec | None = DisaggDeploymentSpec.model_validate(
                parent.get("spec") or {}
            )
        except ValidationError:
            dd_spec = None
        if dd_spec is not None:
            other = "decode" if spec.role == "prefill" else "prefill"
            other_replicas = _sibling_replicas(o.sibling, dd_spec, other)
            mine = {spec.role: replicas, other: other_replicas}
            guard = apply_guards(dd_spec, mine.get("prefill", 1), mine.get("decode", 1))
            replicas = guard.prefill if spec.role == "prefill" else guard.decode
            if guard.clamped and replicas != requested_replicas(spec):
                clamp_reason = "; ".join(guard.reasons)
                before = find(o.status.get("conditions"), Type.DEGRADED) or {}
                if before.get("message") != clamp_reason:
                    events.append(
                        EventSpec("Warning", "ScalingLimited", f"{o.name}: {clamp_reason}")
                    )
    owner = owner_reference(API_VERSION, "InferencePool", o.name, o.uid)
    children = render_pool_children(
        name=o.name,
        namespace=o.namespace,
        spec=spec,
        replicas=replicas,
        deployment=deployment,
        owner=owner,
        prometheus_url=cfg.prometheus_url,
    )
    live_deployment = o.live.get(("Deployment", o.name))
    fields, conds = pool_status(
        spec, replicas, live_deployment, list(o.pods), base[0]["selector"], clamp_reason
    )
    if o.pool_metrics is not None:
        fields["queueDepth"] = _rounded(o.pool_metrics.queue_depth, 1)
        fields["kvCacheUsage"] = _rounded(o.pool_metrics.kv_cache_usage, 3)
    found = pod_template_violations(spec, children, o.namespace, cfg)
    violations = [user_field(v, spec.pod_template, "spec") for v in found]
    if (stop := held_back(o, violations, (fields, conds), cfg)) is not None:
        return stop
    diff = diff_children(children, o.live, o.uid, {names.LABEL_POOL: o.name})
    if diff.conflicts:
        return conflicted(o, diff, (fields, conds), cfg)
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    candidates = {(k, o.name): o.live.get((k, o.name)) for k in POOL_PRUNABLE}
    prunes = find_prunes(wanted, candidates, POOL_CHILD_KINDS, o.namespace, o.uid)
    status = status_update(o, fields, conds, o.generation, cfg)
    defaults = None
    if spec.autoscaling.enabled and (o.obj.get("spec") or {}).get("replicas") is None:
        defaults = {"spec": {"replicas": spec.autoscaling.min_replicas}}
    return Plan(
        defaults=defaults,
        writes=diff.writes,
        prunes=prunes,
        pod_patches=pod_deletion_costs(o) if cfg.deletion_costs else [],
        status=status,
        events=events + degraded_events(o, conds),
    )


def _sibling_replicas(sibling: Body | None, spec: DisaggDeploymentSpec, role: str) -> int:
    """What the other pool asks for (its live spec; the DisaggDeployment's until it exists)."""
    if sibling and sibling.get("spec"):
        try:
            return requested_replicas(InferencePoolSpec.model_validate(sibling["spec"]))
        except ValidationError:
            pass
    return requested_replicas(section(spec, role))


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)

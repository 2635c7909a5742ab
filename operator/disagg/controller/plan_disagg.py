"""plan_disagg(): one reconcile of a DisaggDeployment, decided without the cluster.

It owns two pools and the gateway's objects.  An autoscaled pool's ``spec.replicas``
belongs to its autoscaler: set once at creation and afterwards only pulled inside new
bounds, so the DisaggDeployment never races an HPA.  Its ``observedGeneration`` moves
only when both pools have applied the spec it gave them.

Its status is written once per generation, not on the way there: while its children
are being written or a pool has not yet caught up with the spec this object gave it
(and nothing is Degraded), a status would only be overwritten a moment later — the
pools' own status writes bring the next reconcile.  A failure is written at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePoolSpec
from disagg.api.versions import API_VERSION
from disagg.controller.children import ChildDiff, Write, diff_children
from disagg.controller.children import prunes as find_prunes
from disagg.controller.conditions import (
    Reason,
    Type,
    condition,
    find,
)
from disagg.controller.plan import (
    conflicted,
    degraded_events,
    held_back,
    kept_generation,
    parse_spec,
    pod_template_violations,
    status_update,
    user_field,
)
from disagg.controller.plantypes import (
    GATEWAY_CHILD_KINDS,
    GATEWAY_PRUNABLE,
    Body,
    Observed,
    Plan,
    PlanConfig,
)
from disagg.controller.status import disagg_status, effectiveness
from disagg.render import names
from disagg.render.disaggdeployment import render_disaggdeployment_children, section
from disagg.render.guards import apply_guards
from disagg.render.metadata import owner_reference
from disagg.render.pool import (
    render_pool_children,
)


def _strip_replicas(pool: Body) -> Body:
    spec = {k: v for k, v in pool["spec"].items() if k != "replicas"}
    return {**pool, "spec": spec}


def _pool_writes(
    o: Observed, spec: DisaggDeploymentSpec, diff: ChildDiff, rendered: Mapping[str, int]
) -> list[Write]:
    """Pool writes with ``spec.replicas`` handled: an autoscaled pool's replicas belong to its
    autoscaler — set once at creation, and afterwards only pulled back inside new bounds
    (the pool's admission rule would reject the spec otherwise)."""
    out = []
    for write in diff.writes:
        if write.obj["kind"] != "InferencePool":
            out.append(write)
            continue
        role = write.obj["spec"]["role"]
        scaling = section(spec, role).autoscaling
        if not scaling.enabled:
            out.append(write)
            continue
        live = o.live.get(("InferencePool", write.obj["metadata"]["name"])) or {}
        current = (live.get("spec") or {}).get("replicas")
        body = dict(write.obj["spec"])
        if write.mode == "create":
            body["replicas"] = rendered[role]
        elif current is None or not scaling.min_replicas <= current <= scaling.max_replicas:
            low, high = scaling.min_replicas, scaling.max_replicas
            body["replicas"] = max(low, min(high, current if current is not None else low))
        out.append(Write({**write.obj, "spec": body}, write.mode, write.resource_version))
    return out


def _new_role_ref(o: Observed, writes: list[Write]) -> tuple[str, str] | None:
    """The gateway's RoleBinding, if it must point at another role (the operator's
    ``--gateway-cluster-role`` changed): a roleRef cannot be changed in place."""
    for write in writes:
        if write.obj["kind"] != "RoleBinding" or write.mode != "apply":
            continue
        key = ("RoleBinding", write.obj["metadata"]["name"])
        live = o.live.get(key) or {}
        if live.get("roleRef") != write.obj["roleRef"]:
            return key
    return None


def _caught_up(o: Observed, children: list[tuple[str, str]]) -> bool:
    """Whether each child's controller has observed the child's latest spec."""
    for key in children:
        live = o.live.get(key)
        if live is None:
            return False
        observed = (live.get("status") or {}).get("observedGeneration")
        if observed is None or observed != live["metadata"].get("generation"):
            return False
    return True


def plan_disagg(o: Observed, cfg: PlanConfig) -> Plan:
    """The plan for one DisaggDeployment."""
    spec = parse_spec(o, DisaggDeploymentSpec, cfg)
    if isinstance(spec, Plan):
        return spec
    owner = owner_reference(API_VERSION, "DisaggDeployment", o.name, o.uid)
    children = render_disaggdeployment_children(
        o.name, o.namespace, spec, owner=owner, gateway_cluster_role=cfg.gateway_cluster_role
    )
    rendered_replicas: dict[str, int] = {}
    desired: list[Body] = []
    for child in children:
        if child["kind"] == "InferencePool":
            role = child["spec"]["role"]
            rendered_replicas[role] = int(child["spec"]["replicas"])
            if section(spec, role).autoscaling.enabled:
                child = _strip_replicas(child)
        desired.append(child)
    pool_names = [names.pool_name(o.name, role) for role in ("prefill", "decode")]
    pools = {
        role: o.live.get(("InferencePool", names.pool_name(o.name, role)))
        for role in rendered_replicas
    }
    gateway = o.live.get(("Deployment", names.gateway_name(o.name)))
    requested = {
        role: int(((pool or {}).get("spec") or {}).get("replicas", rendered_replicas[role]))
        for role, pool in pools.items()
    }
    guard = apply_guards(spec, requested["prefill"], requested["decode"])
    fields, conds = disagg_status(
        o.name,
        o.namespace,
        spec,
        pools,
        gateway,
        {"prefill": guard.prefill, "decode": guard.decode},
    )
    share, effective = effectiveness(o.decisions, configured=o.metrics_configured)
    fields["disaggregatedShare"] = None if share is None else round(share, 4)
    conds.append(effective)
    conds.append(
        condition(Type.SCALING_LIMITED, True, Reason.GUARDS_APPLIED, "; ".join(guard.reasons))
        if guard.clamped
        else condition(Type.SCALING_LIMITED, False, Reason.WITHIN_BOUNDS)
    )
    violations: list[str] = []
    for role in ("prefill", "decode"):
        pool_spec = InferencePoolSpec.model_validate(
            next(c for c in children if c["kind"] == "InferencePool" and c["spec"]["role"] == role)[
                "spec"
            ]
        )
        pool_children = render_pool_children(
            name=names.pool_name(o.name, role),
            namespace=o.namespace,
            spec=pool_spec,
            replicas=rendered_replicas[role],
            deployment=o.name,
        )
        found = pod_template_violations(pool_spec, pool_children, o.namespace, cfg)
        violations += [
            user_field(v, section(spec, role).pod_template, f"spec.{role}") for v in found
        ]
    policy = cfg.policies.for_namespace(o.namespace)
    image = spec.gateway.image
    if image not in cfg.trusted_gateway_images and not policy.allow_any_gateway_image:
        trusted = ", ".join(sorted(cfg.trusted_gateway_images))
        violations.append(
            f"spec.gateway.image: {image!r} is not a trusted gateway image ({trusted}); the "
            "gateway holds the API key Secret and reads the namespace's pods"
        )
    if (stop := held_back(o, violations, (fields, conds), cfg)) is not None:
        return stop
    diff = diff_children(desired, o.live, o.uid, {names.LABEL_DEPLOYMENT: o.name})
    if diff.conflicts:
        return conflicted(o, diff, (fields, conds), cfg)
    writes = _pool_writes(o, spec, diff, rendered_replicas)
    gateway_name = names.gateway_name(o.name)
    wanted = {(c["kind"], c["metadata"]["name"]) for c in desired}
    replaced = _new_role_ref(o, writes)
    if replaced is not None:  # roleRef is immutable: delete now, create on the next look
        writes = [w for w in writes if w.obj["kind"] != "RoleBinding"]
        wanted.discard(replaced)
    candidates = {
        (k, gateway_name): o.live.get((k, gateway_name))
        for k in (*GATEWAY_PRUNABLE, *(["RoleBinding"] if replaced else []))
    }
    prunes = find_prunes(wanted, candidates, GATEWAY_CHILD_KINDS, o.namespace, o.uid)
    pool_writes = any(w.obj["kind"] == "InferencePool" for w in writes)
    pool_keys = [("InferencePool", pool_name) for pool_name in pool_names]
    caught_up = not pool_writes and _caught_up(o, pool_keys)
    generation = o.generation if caught_up else kept_generation(o)
    status = status_update(o, fields, conds, generation, cfg)
    settling = writes or prunes or not caught_up
    degraded = (find(conds, Type.DEGRADED) or {}).get("status") == "True"
    if settling and not degraded:
        status = None  # written once the children have caught up (see the module's doc)
    return Plan(writes=writes, prunes=prunes, status=status, events=degraded_events(o, conds))

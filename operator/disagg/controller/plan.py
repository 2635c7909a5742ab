"""``plan(observed) -> Plan``: everything a reconcile decides, without touching the cluster.

A reconcile is observe → plan → act.  ``observe`` copies what it needs out of the
watch cache into an :class:`Observed` value; the functions here turn that into a
:class:`Plan` — children to create or change, children to prune, pod annotations,
the status to write (None when it would not change) and the Events to post — and
``act`` is the only thing that writes.  Plans are pure and strictly typed, which is
where the controller's tests live (tests/test_plan*.py, no API server).

The rules a plan follows:
* An unchanged world plans nothing: no write, no status, no Event.
* Only objects we own (or orphans carrying our labels) are changed; anything else in
  the way is a ``NameConflict``, reported and left untouched (``children``).
* Nothing unsafe is created for a tenant (``render.podpolicy``): ``UnsafePodTemplate``.
* ``status.observedGeneration`` (and each condition's) says the spec of that generation
  has reached every child; a plan that cannot get it there keeps the old value.
* One Warning Event per distinct failure: an Event is planned only when the
  ``Degraded`` condition changes, so resyncs and restarts repeat none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePoolSpec
from disagg.api.versions import API_VERSION
from disagg.controller.children import ChildDiff, Prune, Write, controlled_by, diff_children
from disagg.controller.children import prunes as find_prunes
from disagg.controller.conditions import (
    FAILURE_REASONS,
    Condition,
    Reason,
    Type,
    condition,
    find,
    merge_conditions,
)
from disagg.controller.failures import Failure, FailureMemory, first_line
from disagg.controller.status import Decisions, disagg_status, effectiveness, pool_status
from disagg.render import names
from disagg.render.disaggdeployment import render_disaggdeployment_children, section
from disagg.render.guards import apply_guards
from disagg.render.podpolicy import Allowances, PolicySet, Violation, check_pod_template
from disagg.render.pool import (
    DEFAULT_PROMETHEUS_URL,
    owner_reference,
    render_pool_children,
    requested_replicas,
)

Body = dict[str, Any]
ChildKey = tuple[str, str]

#: Pod annotation the ReplicaSet controller reads to pick which pods go first on scale-down.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"

#: Kinds a pool may own (all named after the pool), and their API versions.
POOL_CHILD_KINDS: dict[str, str] = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "ScaledObject": "keda.sh/v1alpha1",
}
#: Kinds of the gateway's objects (all named ``<deployment>-gateway``).
GATEWAY_CHILD_KINDS: dict[str, str] = {
    "ConfigMap": "v1",
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
}
#: Kinds that come and go with the spec (others exist as long as their owner does).
_POOL_PRUNABLE = ("PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject")
_GATEWAY_PRUNABLE = ("PodDisruptionBudget",)


def pool_child_keys(name: str) -> list[ChildKey]:
    return [(kind, name) for kind in POOL_CHILD_KINDS]


def disagg_child_keys(name: str) -> list[ChildKey]:
    gateway = names.gateway_name(name)
    pools = [("InferencePool", names.pool_name(name, role)) for role in ("prefill", "decode")]
    return pools + [(kind, gateway) for kind in GATEWAY_CHILD_KINDS]


@dataclass(frozen=True)
class PoolMetrics:
    """What Prometheus says about a pool (None: not known)."""

    queue_depth: float | None = None
    kv_cache_usage: float | None = None
    pod_load: Mapping[str, float] = field(default_factory=dict)
    """Running + waiting requests per pod name."""


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile of one object reads, copied out of the cache."""

    obj: Body
    """The InferencePool or DisaggDeployment (slim copy)."""
    live: Mapping[ChildKey, Body | None]
    """Every child it may own, by (kind, name): the live object, or None."""
    parent: Body | None = None
    """A pool's DisaggDeployment, if it is one's child."""
    sibling: Body | None = None
    """A DisaggDeployment child pool's other-role pool."""
    pods: Sequence[Body] = ()
    """A pool's worker pods."""
    pool_metrics: PoolMetrics | None = None
    decisions: Decisions | None = None
    metrics_configured: bool = False
    failure: FailureMemory | None = None
    """The last failed attempt to act on this object (kept in memory, not in etcd)."""

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"].get("uid", ""))

    @property
    def generation(self) -> int | None:
        value = self.obj["metadata"].get("generation")
        return int(value) if value is not None else None

    @property
    def status(self) -> Body:
        return dict(self.obj.get("status") or {})


@dataclass(frozen=True)
class PlanConfig:
    policies: PolicySet = field(default_factory=PolicySet)
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    now: str = "1970-01-01T00:00:00Z"
    """Timestamp for conditions that change in this plan."""
    clock: float = 0.0
    """Monotonic time, compared with :attr:`FailureMemory.retry_at`."""
    deletion_costs: bool = True
    """Annotate pods with their load so scale-down removes idle ones first (needs the right
    to patch pods, which the chart grants only with ``operator.podDeletionCost``)."""


@dataclass(frozen=True)
class EventSpec:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class PodPatch:
    name: str
    annotations: Mapping[str, str]


@dataclass
class Plan:
    """What ``act`` does for one object, in this order."""

    writes: list[Write] = field(default_factory=list)
    prunes: list[Prune] = field(default_factory=list)
    pod_patches: list[PodPatch] = field(default_factory=list)
    status: Body | None = None
    """The whole status to write; None when it equals the live one."""
    events: list[EventSpec] = field(default_factory=list)
    failure: Failure | None = None
    """A failure found while planning (already in ``status``/``events``)."""
    conflicts: list[ChildKey] = field(default_factory=list)
    """Same-named objects in the way: their events must bring this object back."""
    requeue_after: float | None = None
    """Reconcile again after this many seconds even if nothing changes."""

    @property
    def changes_children(self) -> bool:
        return bool(self.writes or self.prunes)

    def applied_message(self) -> str:
        created = [w.ref for w in self.writes if w.mode == "create"]
        updated = [w.ref for w in self.writes if w.mode == "apply"]
        parts = []
        if created:
            parts.append("created " + ", ".join(created))
        if updated:
            parts.append("updated " + ", ".join(updated))
        if self.prunes:
            parts.append("deleted " + ", ".join(f"{p.kind}/{p.name}" for p in self.prunes))
        return "; ".join(parts)


# ----------------------------------------------------------------------- status helpers


def _status(
    o: Observed, fields: Body, conds: list[Condition], generation: int | None, cfg: PlanConfig
) -> Body | None:
    """The status to write, or None if it equals the live one (transition times kept)."""
    old = o.status
    merged = merge_conditions(old.get("conditions", []), conds, generation, cfg.now)
    status: Body = {k: v for k, v in fields.items() if v is not None}
    status["conditions"] = merged
    if generation is not None:
        status["observedGeneration"] = generation
    return None if status == old else status


def _degraded_events(o: Observed, conds: list[Condition]) -> list[EventSpec]:
    """One Warning when Degraded turns True or changes reason/message; one Normal when a
    failure clears."""
    new = find(conds, Type.DEGRADED)
    old = find(o.status.get("conditions"), Type.DEGRADED) or {}
    if new is None:
        return []
    same = (new.get("reason"), new.get("message")) == (old.get("reason"), old.get("message"))
    if new["status"] == "True" and not (same and old.get("status") == "True"):
        return [EventSpec("Warning", str(new["reason"]), str(new.get("message", "")))]
    if (
        new["status"] != "True"
        and old.get("status") == "True"
        and old.get("reason") in FAILURE_REASONS
    ):
        return [EventSpec("Normal", "Recovered", f"no longer {old.get('reason')}")]
    return []


def _invalid(exc: ValidationError) -> str:
    """A spec admission let through (an older CRD, say) that the operator cannot read."""
    problems = [
        "spec." + ".".join(str(p) for p in err["loc"]) + f": {err['msg']}"
        for err in exc.errors(include_url=False)[:5]
    ]
    return "the spec cannot be used: " + "; ".join(problems)


def _kept_generation(o: Observed) -> int | None:
    value = o.status.get("observedGeneration")
    return int(value) if value is not None else None


def _failed(
    o: Observed, failure: Failure, base: tuple[Body, list[Condition]], cfg: PlanConfig
) -> Plan:
    """Status and Events for a failure: Ready and Degraded say why, the generation stays."""
    fields, conds = base
    conds = [c for c in conds if c["type"] not in (Type.READY, Type.DEGRADED)]
    message = first_line(failure.message)
    conds = [
        condition(Type.READY, False, failure.reason, message),
        condition(Type.DEGRADED, True, failure.reason, message),
        *conds,
    ]
    status = _status(o, fields, conds, _kept_generation(o), cfg)
    return Plan(status=status, events=_degraded_events(o, conds), failure=failure)


def failure_plan(o: Observed, failure: Failure, cfg: PlanConfig) -> Plan:
    """The plan after ``act`` failed: the failure in status and one Event, nothing else
    (the rest of the status stays as it was)."""
    old = o.status
    fields = {k: v for k, v in old.items() if k not in ("conditions", "observedGeneration")}
    fields = {**_base_status(o)[0], **fields}
    return _failed(o, failure, (fields, list(old.get("conditions", []))), cfg)


def _base_status(o: Observed) -> tuple[Body, list[Condition]]:
    if o.kind == "InferencePool":
        selector = names.selector_string(names.pool_selector(o.name))
        return {"selector": selector}, []
    return {}, []


def _blocked(o: Observed, cfg: PlanConfig) -> FailureMemory | None:
    """A permanent failure of this very generation, not yet due for its slow retry."""
    memory = o.failure
    if memory is None or not memory.failure.permanent:
        return None
    if memory.generation != o.generation or cfg.clock >= memory.retry_at:
        return None
    return memory


def _violation_message(found: list[str]) -> str:
    shown = "; ".join(found[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    return (
        f"the worker pod template is not allowed in this namespace: {shown}{more}. "
        "A cluster admin can allow it per namespace (chart value workerPolicy)."
    )


def _user_path(violation: Violation, pod_template: Mapping[str, Any] | None, side: str) -> str:
    """A pod-template violation named by the field of the user's object it comes from
    (``side`` is ``spec`` for a pool, ``spec.prefill``/``spec.decode`` for a DisaggDeployment)."""
    template_spec = (pod_template or {}).get("spec") or {}
    top = violation.path.split(".")[1].split("[")[0] if "." in violation.path else ""
    if top in template_spec:
        return f"{side}.podTemplate.{violation.path}: {violation.message}"
    if ".env[" in violation.path or ".envFrom[" in violation.path:
        return f"spec.engine.env ({violation.path}): {violation.message}"
    return f"{side}.podTemplate.{violation.path}: {violation.message}"


def _allowances(spec: InferencePoolSpec) -> Allowances:
    secrets = {spec.model.token_secret_ref.name} if spec.model.token_secret_ref else set()
    claims = {spec.model.volume.claim_name} if spec.model.volume else set()
    caps = {"IPC_LOCK"} if spec.rdma.enabled else set()
    return Allowances(frozenset(secrets), frozenset(claims), frozenset(caps))


def _pod_template_violations(
    spec: InferencePoolSpec, children: list[Body], namespace: str, cfg: PlanConfig
) -> list[Violation]:
    deployment = next(c for c in children if c["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    return check_pod_template(template, cfg.policies.for_namespace(namespace), _allowances(spec))


def _conflicted(
    o: Observed, diff: ChildDiff, base: tuple[Body, list[Condition]], cfg: PlanConfig
) -> Plan:
    """A plan that writes nothing because objects not ours hold the children's names."""
    taken = ", ".join(f"{kind}/{name}" for kind, name in diff.conflicts)
    message = (
        f"objects of the same name exist and are not managed by this {o.kind}: {taken}; "
        "rename or delete them (they are left untouched)"
    )
    plan = _failed(o, Failure(Reason.NAME_CONFLICT, message), base, cfg)
    plan.conflicts = list(diff.conflicts)
    return plan


def _deletion_costs(o: Observed) -> list[PodPatch]:
    """Busy workers cost more to delete, so scale-down removes the least busy first."""
    load = o.pool_metrics.pod_load if o.pool_metrics else {}
    patches = []
    for pod in o.pods:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or meta["name"] not in load:
            continue
        cost = str(int(load[meta["name"]] * 100))
        if (meta.get("annotations") or {}).get(DELETION_COST) != cost:
            patches.append(PodPatch(meta["name"], {DELETION_COST: cost}))
    return patches


# -------------------------------------------------------------------------------- pools


def plan_pool(o: Observed, cfg: PlanConfig) -> Plan:
    """The plan for one InferencePool."""
    if o.obj["metadata"].get("deletionTimestamp"):
        return Plan()
    base = _base_status(o)
    try:
        spec = InferencePoolSpec.model_validate(o.obj.get("spec") or {})
    except ValidationError as exc:
        return _failed(o, Failure(Reason.INVALID_SPEC, _invalid(exc)), base, cfg)
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
    violations = _pod_template_violations(spec, children, o.namespace, cfg)
    if violations:
        found = [_user_path(v, spec.pod_template, "spec") for v in violations]
        failure = Failure(Reason.UNSAFE_POD_TEMPLATE, _violation_message(found))
        return _failed(o, failure, (fields, conds), cfg)
    if (memory := _blocked(o, cfg)) is not None:
        plan = _failed(o, memory.failure, (fields, conds), cfg)
        plan.requeue_after = memory.retry_at - cfg.clock
        return plan
    diff = diff_children(children, o.live, o.uid, {names.LABEL_POOL: o.name})
    if diff.conflicts:
        return _conflicted(o, diff, (fields, conds), cfg)
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    candidates = {(k, o.name): o.live.get((k, o.name)) for k in _POOL_PRUNABLE}
    prunes = find_prunes(wanted, candidates, POOL_CHILD_KINDS, o.namespace, o.uid)
    status = _status(o, fields, conds, o.generation, cfg)
    return Plan(
        writes=diff.writes,
        prunes=prunes,
        pod_patches=_deletion_costs(o) if cfg.deletion_costs else [],
        status=status,
        events=events + _degraded_events(o, conds),
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


# --------------------------------------------------------------------- disagg deployments


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


def _pools_caught_up(o: Observed, pool_names: list[str]) -> bool:
    for pool_name in pool_names:
        live = o.live.get(("InferencePool", pool_name))
        if live is None:
            return False
        observed = (live.get("status") or {}).get("observedGeneration")
        if observed is None or observed != live["metadata"].get("generation"):
            return False
    return True


def plan_disagg(o: Observed, cfg: PlanConfig) -> Plan:
    """The plan for one DisaggDeployment."""
    if o.obj["metadata"].get("deletionTimestamp"):
        return Plan()
    base = _base_status(o)
    try:
        spec = DisaggDeploymentSpec.model_validate(o.obj.get("spec") or {})
    except ValidationError as exc:
        return _failed(o, Failure(Reason.INVALID_SPEC, _invalid(exc)), base, cfg)
    owner = owner_reference(API_VERSION, "DisaggDeployment", o.name, o.uid)
    children = render_disaggdeployment_children(o.name, o.namespace, spec, owner=owner)
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
        found = _pod_template_violations(pool_spec, pool_children, o.namespace, cfg)
        violations += [
            _user_path(v, section(spec, role).pod_template, f"spec.{role}") for v in found
        ]
    if violations:
        failure = Failure(Reason.UNSAFE_POD_TEMPLATE, _violation_message(violations))
        return _failed(o, failure, (fields, conds), cfg)
    if (memory := _blocked(o, cfg)) is not None:
        plan = _failed(o, memory.failure, (fields, conds), cfg)
        plan.requeue_after = memory.retry_at - cfg.clock
        return plan
    diff = diff_children(desired, o.live, o.uid, {names.LABEL_DEPLOYMENT: o.name})
    if diff.conflicts:
        return _conflicted(o, diff, (fields, conds), cfg)
    writes = _pool_writes(o, spec, diff, rendered_replicas)
    gateway_name = names.gateway_name(o.name)
    wanted = {(c["kind"], c["metadata"]["name"]) for c in desired}
    candidates = {(k, gateway_name): o.live.get((k, gateway_name)) for k in _GATEWAY_PRUNABLE}
    prunes = find_prunes(wanted, candidates, GATEWAY_CHILD_KINDS, o.namespace, o.uid)
    pool_writes = any(w.obj["kind"] == "InferencePool" for w in writes)
    caught_up = not pool_writes and _pools_caught_up(o, pool_names)
    generation = o.generation if caught_up else _kept_generation(o)
    status = _status(o, fields, conds, generation, cfg)
    return Plan(writes=writes, prunes=prunes, status=status, events=_degraded_events(o, conds))

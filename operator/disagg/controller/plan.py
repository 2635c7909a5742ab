"""``plan(observed) -> Plan``: everything a reconcile decides, without touching the cluster.

A reconcile is observe → plan → act.  ``observe`` copies what it needs out of the
watch cache into an :class:`Observed` value; ``plan_pool`` and ``plan_disagg`` (with the
shared rules in this module) turn that into a
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

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from disagg.api.inferencepool import InferencePoolSpec
from disagg.controller.children import ChildDiff
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
from disagg.controller.plantypes import (
    DELETION_COST,
    Body,
    EventSpec,
    Observed,
    Plan,
    PlanConfig,
    PodPatch,
)
from disagg.render import names
from disagg.render.podpolicy import Allowances, Violation, check_pod_template

# ----------------------------------------------------------------------- status helpers


def _without_none(fields: Body) -> Body:
    """Status fields without unknown (None) values, at any depth: the schema has no nulls."""
    return {
        k: _without_none(v) if isinstance(v, dict) else v
        for k, v in fields.items()
        if v is not None
    }


def status_update(
    o: Observed, fields: Body, conds: list[Condition], generation: int | None, cfg: PlanConfig
) -> Body | None:
    """The status to write, or None if it equals the live one (transition times kept)."""
    old = o.status
    merged = merge_conditions(old.get("conditions", []), conds, generation, cfg.now)
    status: Body = _without_none(fields)
    status["conditions"] = merged
    if generation is not None:
        status["observedGeneration"] = generation
    return None if status == old else status


def degraded_events(o: Observed, conds: list[Condition]) -> list[EventSpec]:
    """One Warning when Degraded turns True or changes reason; one Normal when a failure
    clears.

    A new message under the same reason updates the status but is not announced again: the
    server rewords its errors from one attempt to the next (a webhook refused, then timed
    out), and a DisaggDeployment's Degraded may name its own failed write on one look and
    its pool's on the next.  One Event per failure class per object, until it clears."""
    new = find(conds, Type.DEGRADED)
    old = find(o.status.get("conditions"), Type.DEGRADED) or {}
    if new is None:
        return []
    same = new.get("reason") == old.get("reason")
    if new["status"] == "True" and not (same and old.get("status") == "True"):
        return [EventSpec("Warning", str(new["reason"]), str(new.get("message", "")))]
    if (
        new["status"] != "True"
        and old.get("status") == "True"
        and old.get("reason") in FAILURE_REASONS
    ):
        return [EventSpec("Normal", "Recovered", f"no longer {old.get('reason')}")]
    return []


def invalid_spec_message(exc: ValidationError) -> str:
    """A spec admission let through (an older CRD, say) that the operator cannot read."""
    problems = [
        "spec." + ".".join(str(p) for p in err["loc"]) + f": {err['msg']}"
        for err in exc.errors(include_url=False)[:5]
    ]
    return "the spec cannot be used: " + "; ".join(problems)


def kept_generation(o: Observed) -> int | None:
    value = o.status.get("observedGeneration")
    return int(value) if value is not None else None


def failed(
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
    status = status_update(o, fields, conds, kept_generation(o), cfg)
    return Plan(status=status, events=degraded_events(o, conds), failure=failure)


def failure_plan(o: Observed, failure: Failure, cfg: PlanConfig) -> Plan:
    """The plan after ``act`` failed: the failure in status and one Event, nothing else
    (the rest of the status stays as it was)."""
    old = o.status
    fields = {k: v for k, v in old.items() if k not in ("conditions", "observedGeneration")}
    fields = {**base_status(o)[0], **fields}
    return failed(o, failure, (fields, list(old.get("conditions", []))), cfg)


def base_status(o: Observed) -> tuple[Body, list[Condition]]:
    if o.kind == "InferencePool":
        selector = names.selector_string(names.pool_selector(o.name))
        return {"selector": selector}, []
    return {}, []


Spec = TypeVar("Spec", bound=BaseModel)


def parse_spec(o: Observed, model: type[Spec], cfg: PlanConfig) -> Spec | Plan:
    """The object's spec, or the plan that ends the reconcile before it starts: nothing for an
    object being deleted (its children go with it), the failure for a spec that does not
    validate (the API server's schema lets through what only the models check)."""
    if o.obj["metadata"].get("deletionTimestamp"):
        return Plan()
    try:
        return model.model_validate(o.obj.get("spec") or {})
    except ValidationError as exc:
        failure = Failure(Reason.INVALID_SPEC, invalid_spec_message(exc))
        return failed(o, failure, base_status(o), cfg)


def held_back(
    o: Observed, violations: list[str], status: tuple[Body, list[Condition]], cfg: PlanConfig
) -> Plan | None:
    """The plan when nothing may be written: pod-template violations (named by the user's
    fields), or a permanent failure of this generation not yet due for its slow retry."""
    if violations:
        failure = Failure(Reason.UNSAFE_POD_TEMPLATE, violation_message(violations))
        return failed(o, failure, status, cfg)
    if (memory := blocked_by_failure(o, cfg)) is not None:
        plan = failed(o, memory.failure, status, cfg)
        plan.requeue_after = memory.retry_at - cfg.clock
        return plan
    return None


def blocked_by_failure(o: Observed, cfg: PlanConfig) -> FailureMemory | None:
    """A permanent failure of this very generation, not yet due for its slow retry."""
    memory = o.failure
    if memory is None or not memory.failure.permanent:
        return None
    if memory.generation != o.generation or cfg.clock >= memory.retry_at:
        return None
    return memory


def violation_message(found: list[str]) -> str:
    shown = "; ".join(found[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    return (
        f"refused in this namespace: {shown}{more}. "
        "A cluster admin can allow it per namespace (chart value workerPolicy)."
    )


def user_field(violation: Violation, pod_template: Mapping[str, Any] | None, side: str) -> str:
    """A pod-template violation named by the field of the user's object it comes from
    (``side`` is ``spec`` for a pool, ``spec.prefill``/``spec.decode`` for a DisaggDeployment)."""
    template_spec = (pod_template or {}).get("spec") or {}
    top = violation.path.split(".")[1].split("[")[0] if "." in violation.path else ""
    if top in template_spec:
        return f"{side}.podTemplate.{violation.path}: {violation.message}"
    if ".env[" in violation.path or ".envFrom[" in violation.path:
        return f"spec.engine.env ({violation.path}): {violation.message}"
    return f"{side}.podTemplate.{violation.path}: {violation.message}"


def allowances(spec: InferencePoolSpec) -> Allowances:
    secrets = {spec.model.token_secret_ref.name} if spec.model.token_secret_ref else set()
    claims = {spec.model.volume.claim_name} if spec.model.volume else set()
    caps = {"IPC_LOCK"} if spec.rdma.enabled else set()
    return Allowances(frozenset(secrets), frozenset(claims), frozenset(caps))


def pod_template_violations(
    spec: InferencePoolSpec, children: list[Body], namespace: str, cfg: PlanConfig
) -> list[Violation]:
    deployment = next(c for c in children if c["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    return check_pod_template(template, cfg.policies.for_namespace(namespace), allowances(spec))


def conflicted(
    o: Observed, diff: ChildDiff, base: tuple[Body, list[Condition]], cfg: PlanConfig
) -> Plan:
    """A plan that writes nothing because objects not ours hold the children's names."""
    taken = ", ".join(f"{kind}/{name}" for kind, name in diff.conflicts)
    message = (
        f"objects of the same name exist and are not managed by this {o.kind}: {taken}; "
        "rename or delete them (they are left untouched)"
    )
    plan = failed(o, Failure(Reason.NAME_CONFLICT, message), base, cfg)
    plan.conflicts = list(diff.conflicts)
    return plan


def pod_deletion_costs(o: Observed) -> list[PodPatch]:
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

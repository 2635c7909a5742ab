"""Level-triggered reconciliation of InferencePools and DisaggDeployments.

Each ``reconcile_*`` reads the object, renders every child it should have,
applies them all with server-side apply (idempotent: running twice changes
nothing), deletes managed children that are no longer desired, and writes
status.  It never depends on what triggered it, so create, update, resume, the
drift timer and child events all call the same function.

Problems with the spec itself (the API server rejects a rendered child) become
a ``Degraded`` condition and a Warning event, and are not retried until the spec
changes; anything else raises :class:`TransientError` for the framework to retry
with backoff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.inferencepool import InferencePoolSpec
from disagg.api.versions import API_VERSION
from disagg.controller.conditions import condition, find, merge_conditions
from disagg.controller.kube import Invalid, Kube, NotFound
from disagg.controller.observe import (
    MetricsReader,
    effectiveness,
    pod_load_query,
    pool_kv_usage_query,
    pool_queue_query,
)
from disagg.controller.status import disagg_status, pool_status
from disagg.render import names
from disagg.render.disaggdeployment import render_disaggdeployment_children
from disagg.render.guards import GuardResult, apply_guards
from disagg.render.pool import DEFAULT_PROMETHEUS_URL, owner_reference, render_pool_children

log = logging.getLogger(__name__)

#: Pod annotation the ReplicaSet controller reads to pick which pods go first on scale-down.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"

#: Children kinds that come and go with the spec (others always exist while the owner does).
PRUNABLE = (
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
)


@dataclass
class Outcome:
    """What a reconcile did, for Events and logs."""

    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message): type is ``Normal`` or ``Warning``."""

    def normal(self, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))

    def warning(self, reason: str, message: str) -> None:
        self.events.append(("Warning", reason, message))


def _meta(body: dict[str, Any]) -> tuple[str, str, str, int | None]:
    meta = body["metadata"]
    return meta["name"], meta["namespace"], meta.get("uid", ""), meta.get("generation")


class Reconciler:
    def __init__(self, kube: Kube, prometheus_url: str | None = None) -> None:
        """``prometheus_url``: where observed load is read from (None: not read) and what
        KEDA ScaledObjects query."""
        self.kube = kube
        self.prometheus_url = prometheus_url or DEFAULT_PROMETHEUS_URL
        self.metrics = MetricsReader(prometheus_url)

    # ---------------------------------------------------------------- pools

    def child_pools(self, namespace: str, deployment: str) -> dict[str, dict[str, Any] | None]:
        """The live prefill and decode InferencePools of ``deployment`` (None where absent)."""
        return {
            role: self.kube.get_or_none(
                API_VERSION, "InferencePool", namespace, names.pool_name(deployment, role)
            )
            for role in ("prefill", "decode")
        }

    def guard_for(self, namespace: str, deployment: str) -> GuardResult:
        """Guarded replicas of both child pools of ``deployment``."""
        parent = self.kube.get(API_VERSION, "DisaggDeployment", namespace, deployment)
        spec = DisaggDeploymentSpec.model_validate(parent["spec"])
        requested = {}
        for role, child in self.child_pools(namespace, deployment).items():
            side = spec.prefill if role == "prefill" else spec.decode
            requested[role] = (child or {}).get("spec", {}).get("replicas", side.replicas)
        return apply_guards(spec, requested["prefill"], requested["decode"])

    def reconcile_pool(self, body: dict[str, Any], outcome: Outcome | None = None) -> Outcome:
        outcome = outcome or Outcome()
        name, namespace, uid, generation = _meta(body)
        old_conditions = body.get("status", {}).get("conditions", [])
        selector = names.selector_string(names.pool_selector(name))
        try:
            spec = InferencePoolSpec.model_validate(body.get("spec", {}))
        except ValidationError as exc:
            self._pool_failed(body, "InvalidSpec", str(exc), selector, outcome)
            return outcome
        deployment = body["metadata"].get("labels", {}).get(names.LABEL_DEPLOYMENT)
        replicas, clamp_reason = spec.replicas, None
        if deployment:
            guard: GuardResult | None
            try:
                guard = self.guard_for(namespace, deployment)
            except NotFound:
                guard = None
            if guard is not None:
                replicas = guard.prefill if spec.role == "prefill" else guard.decode
                if replicas != spec.replicas:
                    clamp_reason = "; ".join(guard.reasons)
                    # One Warning per new clamp, not one per resync while it lasts.
                    before = find(old_conditions, "Degraded") or {}
                    if before.get("message") != clamp_reason:
                        outcome.warning("ScalingLimited", f"{name}: {clamp_reason}")
        owner = owner_reference(API_VERSION, "InferencePool", name, uid)
        children = render_pool_children(
            name=name,
            namespace=namespace,
            spec=spec,
            replicas=replicas,
            deployment=deployment,
            owner=owner,
            prometheus_url=self.prometheus_url,
        )
        try:
            applied = self._apply_all(children)
        except Invalid as exc:
            self._pool_failed(body, "ApplyFailed", str(exc), selector, outcome)
            return outcome
        except NotFound as exc:  # e.g. KEDA's CRD is not installed
            self._pool_failed(body, "MissingAPI", str(exc), selector, outcome)
            return outcome
        outcome.normal("Applied", f"generation {generation}: {applied}")
        self._prune(namespace, names.pool_selector(name), uid, children, outcome)
        live = self.kube.get_or_none("apps/v1", "Deployment", namespace, name)
        pods = self.kube.list("v1", "Pod", namespace, names.pool_selector(name))
        fields, conds = pool_status(spec, replicas, live, pods, selector, clamp_reason)
        fields["queueDepth"] = self.metrics.scalar(pool_queue_query(namespace, name))
        fields["kvCacheUsage"] = self.metrics.scalar(pool_kv_usage_query(namespace, name))
        self._set_deletion_costs(namespace, name, pods)
        self._write_status(body, "InferencePool", fields, conds, old_conditions, generation)
        return outcome

    def _pool_failed(
        self, body: dict[str, Any], reason: str, message: str, selector: str, outcome: Outcome
    ) -> None:
        _, _, _, generation = _meta(body)
        outcome.warning(reason, message)
        conds = [
            condition("Ready", False, reason, message),
            condition("Degraded", True, reason, message),
        ]
        old = body.get("status", {}).get("conditions", [])
        self._write_status(body, "InferencePool", {"selector": selector}, conds, old, generation)

    def _set_deletion_costs(self, namespace: str, pool: str, pods: list[dict[str, Any]]) -> None:
        """Busy workers cost more to delete, so scale-down removes the least busy first."""
        load = self.metrics.per_pod(pod_load_query(namespace, pool))
        if not load:
            return
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or meta["name"] not in load:
                continue
            cost = str(int(load[meta["name"]] * 100))
            if meta.get("annotations", {}).get(DELETION_COST) != cost:
                self.kube.merge_patch(
                    "v1",
                    "Pod",
                    namespace,
                    meta["name"],
                    {"metadata": {"annotations": {DELETION_COST: cost}}},
                )

    # ------------------------------------------------------ disagg deployments

    def reconcile_disaggdeployment(
        self, body: dict[str, Any], outcome: Outcome | None = None
    ) -> Outcome:
        outcome = outcome or Outcome()
        name, namespace, uid, generation = _meta(body)
        old_conditions = body.get("status", {}).get("conditions", [])
        try:
            spec = DisaggDeploymentSpec.model_validate(body.get("spec", {}))
        except ValidationError as exc:
            self._disagg_failed(body, "InvalidSpec", str(exc), outcome)
            return outcome
        current: dict[str, int | None] = {
            role: (live or {}).get("spec", {}).get("replicas")
            for role, live in self.child_pools(namespace, name).items()
        }
        owner = owner_reference(API_VERSION, "DisaggDeployment", name, uid)
        children = render_disaggdeployment_children(
            name, namespace, spec, current_replicas=current, owner=owner
        )
        try:
            applied = self._apply_all(children)
        except (Invalid, NotFound) as exc:
            self._disagg_failed(body, "ApplyFailed", str(exc), outcome)
            return outcome
        outcome.normal("Applied", f"generation {generation}: {applied}")
        self.refresh_disaggdeployment_status(body, spec, old_conditions, generation)
        return outcome

    def refresh_disaggdeployment_status(
        self,
        body: dict[str, Any],
        spec: DisaggDeploymentSpec | None = None,
        old_conditions: list[dict[str, Any]] | None = None,
        generation: int | None = None,
    ) -> None:
        name, namespace, _, gen = _meta(body)
        if spec is None:
            spec = DisaggDeploymentSpec.model_validate(body.get("spec", {}))
        pools = self.child_pools(namespace, name)
        gateway = self.kube.get_or_none(
            "apps/v1", "Deployment", namespace, names.gateway_name(name)
        )
        requested = {
            role: (pool or {}).get("spec", {}).get("replicas", 0) for role, pool in pools.items()
        }
        guard = apply_guards(spec, requested["prefill"], requested["decode"])
        desired = {"prefill": guard.prefill, "decode": guard.decode}
        fields, conds = disagg_status(name, namespace, spec, pools, gateway, desired)
        share, effective = effectiveness(
            self.metrics.decisions(namespace, name), configured=bool(self.metrics.url)
        )
        fields["disaggregatedShare"] = None if share is None else round(share, 4)
        conds.append(effective)
        if guard.clamped:
            conds.append(
                condition("ScalingLimited", True, "GuardsApplied", "; ".join(guard.reasons))
            )
        else:
            conds.append(condition("ScalingLimited", False, "WithinBounds"))
        old = (
            old_conditions
            if old_conditions is not None
            else body.get("status", {}).get("conditions", [])
        )
        self._write_status(
            body, "DisaggDeployment", fields, conds, old, generation if generation else gen
        )

    def _disagg_failed(
        self, body: dict[str, Any], reason: str, message: str, outcome: Outcome
    ) -> None:
        _, _, _, generation = _meta(body)
        outcome.warning(reason, message)
        conds = [
            condition("Ready", False, reason, message),
            condition("Degraded", True, reason, message),
        ]
        old = body.get("status", {}).get("conditions", [])
        self._write_status(body, "DisaggDeployment", {}, conds, old, generation)

    # -------------------------------------------------------------- helpers

    def _apply_all(self, objects: list[dict[str, Any]]) -> str:
        """Apply every object; returns what was applied, for the ``Applied`` event."""
        for obj in objects:
            self.kube.apply(obj)
        return ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects)

    def _prune(
        self,
        namespace: str,
        selector: dict[str, str],
        owner_uid: str,
        desired: list[dict[str, Any]],
        outcome: Outcome,
    ) -> None:
        wanted = {(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in desired}
        for api_version, kind in PRUNABLE:
            try:
                existing = self.kube.list(api_version, kind, namespace, selector)
            except NotFound:  # the API (e.g. KEDA) is not installed: nothing to prune
                continue
            for obj in existing:
                meta = obj["metadata"]
                owned = any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences", []))
                if owned and (api_version, kind, meta["name"]) not in wanted:
                    self.kube.delete(api_version, kind, namespace, meta["name"])
                    outcome.normal("Pruned", f"deleted {kind} {meta['name']}: no longer desired")

    def _write_status(
        self,
        body: dict[str, Any],
        kind: str,
        fields: dict[str, Any],
        conds: list[dict[str, Any]],
        old_conditions: list[dict[str, Any]],
        generation: int | None,
    ) -> None:
        name, namespace, _, _ = _meta(body)
        status = {
            **{k: v for k, v in fields.items() if v is not None},
            "conditions": merge_conditions(old_conditions, conds, generation),
        }
        if generation is not None:
            status["observedGeneration"] = generation
        try:
            self.kube.apply_status(API_VERSION, kind, namespace, name, status)
        except NotFound:
            log.info("%s %s/%s is gone; status not written", kind, namespace, name)

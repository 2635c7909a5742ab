"""A small world for plan() tests: objects as the API server would hold them, no server.

``World`` holds a pool or DisaggDeployment and its live children, builds the
``Observed`` value a reconcile would see, and can "apply" a plan's writes the way
the server would (so a test can check that the second reconcile plans nothing).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from disagg.controller.drift import with_hash
from disagg.controller.failures import FailureMemory
from disagg.controller.plan_disagg import plan_disagg
from disagg.controller.plan_pool import plan_pool
from disagg.controller.plantypes import (
    Observed,
    Plan,
    PlanConfig,
    PoolMetrics,
    disagg_child_keys,
    pool_child_keys,
)
from disagg.controller.status import Decisions
from disagg.render.podpolicy import PolicySet

Body = dict[str, Any]
NS = "team-a"
_uids = itertools.count(1)


def uid() -> str:
    return f"uid-{next(_uids):04d}"


def pool_obj(name: str = "p", generation: int = 1, **spec: Any) -> Body:
    body = {"role": "prefill", "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, **spec}
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": NS, "uid": uid(), "generation": generation},
        "spec": body,
    }


def disagg_obj(name: str = "llm", generation: int = 1, **spec: Any) -> Body:
    body = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, **spec}
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggDeployment",
        "metadata": {"name": name, "namespace": NS, "uid": uid(), "generation": generation},
        "spec": body,
    }


def foreign(kind: str, name: str, **meta: Any) -> Body:
    """Someone else's object of that name (no ownerReference, no labels of ours)."""
    return {"kind": kind, "metadata": {"name": name, "namespace": NS, "uid": uid(), **meta}}


@dataclass
class World:
    obj: Body
    live: dict[tuple[str, str], Body | None] = field(default_factory=dict)
    parent: Body | None = None
    sibling: Body | None = None
    pods: list[Body] = field(default_factory=list)
    pool_metrics: PoolMetrics | None = None
    decisions: Decisions | None = None
    failure: FailureMemory | None = None
    policies: PolicySet = field(default_factory=PolicySet)
    clock: float = 1000.0
    gateway_cluster_role: str | None = None
    rv: itertools.count = field(default_factory=lambda: itertools.count(100))  # type: ignore[type-arg]

    @property
    def is_pool(self) -> bool:
        return self.obj["kind"] == "InferencePool"

    def observed(self) -> Observed:
        name = self.obj["metadata"]["name"]
        keys = pool_child_keys(name) if self.is_pool else disagg_child_keys(name)
        return Observed(
            obj=copy.deepcopy(self.obj),
            live={k: copy.deepcopy(self.live.get(k)) for k in keys},
            parent=self.parent,
            sibling=self.sibling,
            pods=tuple(self.pods),
            pool_metrics=self.pool_metrics,
            decisions=self.decisions,
            metrics_configured=self.decisions is not None or self.pool_metrics is not None,
            failure=self.failure,
        )

    def config(self) -> PlanConfig:
        return PlanConfig(
            policies=self.policies,
            now="2026-12-01T00:00:00Z",
            clock=self.clock,
            gateway_cluster_role=self.gateway_cluster_role,
        )

    def plan(self) -> Plan:
        fn = plan_pool if self.is_pool else plan_disagg
        return fn(self.observed(), self.config())

    def apply(self, plan: Plan, *, ready: bool = True) -> None:
        """What the server and the other controllers make of ``plan``: children written
        (with a new resourceVersion; child pools and Deployments report having caught up),
        pruned objects gone, status stored."""
        if plan.defaults is not None:
            self.obj["spec"].update(plan.defaults["spec"])
            self.obj["metadata"]["generation"] += 1
        for write in plan.writes:
            obj = copy.deepcopy(write.obj)
            key = (obj["kind"], obj["metadata"]["name"])
            before = self.live.get(key)
            meta = obj["metadata"]
            meta["uid"] = (before or {}).get("metadata", {}).get("uid") or uid()
            meta["resourceVersion"] = str(next(self.rv))
            generation = int((before or {}).get("metadata", {}).get("generation", 0)) + 1
            meta["generation"] = generation
            if write.mode == "apply" and before is not None and "spec" in before:
                # Fields we do not send stay as they were (e.g. an autoscaler's replicas).
                obj["spec"] = {**before["spec"], **obj.get("spec", {})}
            if obj["kind"] == "Deployment":
                replicas = obj["spec"].get("replicas", 1)
                obj["status"] = {
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "readyReplicas": replicas if ready else 0,
                    "updatedReplicas": replicas,
                }
            if obj["kind"] == "InferencePool":
                obj["status"] = {
                    "observedGeneration": generation,
                    "readyReplicas": obj["spec"].get("replicas", 1) if ready else 0,
                    "conditions": [
                        {"type": "Ready", "status": "True" if ready else "False", "reason": "X"}
                    ],
                }
            self.live[key] = obj
        for prune in plan.prunes:
            self.live[(prune.kind, prune.name)] = None
        if plan.status is not None:
            self.obj["status"] = copy.deepcopy(plan.status)

    def converge(self, rounds: int = 4) -> Plan:
        """Plan and apply until a plan writes nothing; returns that last plan."""
        plan = self.plan()
        for _ in range(rounds):
            if not plan.changes_children and plan.status is None:
                return plan
            self.apply(plan)
            plan = self.plan()
        return plan


def owned_live(world: World, plan: Plan) -> None:
    """Store ``plan``'s writes as live objects (alias of World.apply for readability)."""
    world.apply(plan)


def cond(status: Body | None, type_: str) -> Body:
    for c in (status or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    raise AssertionError(f"no {type_} condition in {status}")


def hashed(obj: Body) -> Body:
    return with_hash(obj)

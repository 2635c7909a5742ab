"""The values a reconcile passes between its steps: ``Observed`` (observe → plan) and
``Plan`` (plan → act), and the fixed shape of what an object may own.

``Observed`` is a copy of everything one reconcile reads (the object, every child it
may own by kind and name, its pods, the last Prometheus numbers, the last failure);
``Plan`` is everything it will do (writes, prunes, pod annotations, the status,
Events).  Both are plain values: tests build them without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from disagg.api.versions import DEFAULT_GATEWAY_IMAGE
from disagg.controller.children import Prune, Write
from disagg.controller.failures import Failure, FailureMemory
from disagg.controller.status import Decisions
from disagg.render import names
from disagg.render.podpolicy import PolicySet
from disagg.render.pool import (
    DEFAULT_PROMETHEUS_URL,
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
POOL_PRUNABLE = ("PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject")
GATEWAY_PRUNABLE = ("PodDisruptionBudget", "Role")


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
    def resource_version(self) -> str | None:
        value = self.obj["metadata"].get("resourceVersion")
        return str(value) if value is not None else None

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
    trusted_gateway_images: frozenset[str] = frozenset({DEFAULT_GATEWAY_IMAGE})
    """Gateway images any tenant may run (others need ``allowAnyGatewayImage``)."""
    gateway_cluster_role: str | None = None
    """The ClusterRole the chart installs for gateways (bound per DisaggDeployment instead
    of a Role of its own); None: each gateway gets its own Role."""
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

    defaults: Body | None = None
    """A merge patch of the object's own spec: what the API cannot default (an autoscaled
    pool's ``replicas`` starts at ``autoscaling.minReplicas``; at 0 or unset its autoscaler
    would not act)."""
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
        return bool(self.writes or self.prunes or self.defaults)

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

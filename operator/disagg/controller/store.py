"""The watch-fed cache every reconcile reads from (and the only thing it reads).

kopf keeps one watch stream per kind; an index handler per kind (``handlers``) puts
a *slim* copy of each object into a kopf index keyed by ``(namespace, name)``, and
kopf holds every other handler back until all indexes are filled from their
initial listings — so the first reconcile after a start already sees every object.
Nothing here talks to the API.

Slim copies keep what a reconcile compares or reports and drop the rest
(``managedFields``, the last-applied annotation): the whole object for what the
operator owns or may own, only identity and ownership for anything else of a
child kind (enough to see a name conflict, small enough to watch a busy cluster).

Our own writes are remembered until the watch catches up (``Store.remember``): the API
answers every create and apply with the object as written, and a reconcile that runs
before its watch event arrives (a busy API server, a sibling's event) would otherwise plan
the same create again -- a second POST, AlreadyExists, a GET -- or re-apply what it just
applied.  A remembered object stands in for the cached one only while the cache still
shows the version it was written over (nothing, for a create) or one of our own writes
before it; any other version there is newer news and wins, and a memory older than
``WRITTEN_TTL_SECONDS`` is dropped, so a write whose event was lost (a relist) cannot
hide what the cluster holds for long.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from disagg.render import names

Body = dict[str, Any]

#: kind -> kopf index id (also the handler's function name, see ``handlers``).
INDEX_OF_KIND: dict[str, str] = {
    "DisaggDeployment": "disagg_index",
    "InferencePool": "pool_index",
    "Deployment": "deployment_index",
    "Service": "service_index",
    "ConfigMap": "configmap_index",
    "ServiceAccount": "serviceaccount_index",
    "Role": "role_index",
    "RoleBinding": "rolebinding_index",
    "PodDisruptionBudget": "pdb_index",
    "HorizontalPodAutoscaler": "hpa_index",
    "ScaledObject": "scaledobject_index",
}
#: Pods of our pools and gateways, keyed ``(namespace, "pool"|"gateway", name)``.
POD_INDEX = "pod_index"

_IDENTITY = ("name", "namespace", "uid", "resourceVersion", "generation", "labels")
_OURS = frozenset({"DisaggDeployment", "InferencePool"})


def is_managed(body: Mapping[str, Any]) -> bool:
    """Carries our managed-by label, or is controlled by one of our kinds."""
    meta = body.get("metadata", {})
    if (meta.get("labels") or {}).get(names.LABEL_MANAGED_BY) == names.MANAGED_BY:
        return True
    return any(
        ref.get("controller") and ref.get("kind") in _OURS
        for ref in meta.get("ownerReferences") or []
    )


def slim(kind: str, body: Mapping[str, Any]) -> Body:
    """The part of ``body`` the cache keeps (a new dict)."""
    meta = body.get("metadata", {})
    keep = {k: meta[k] for k in _IDENTITY if k in meta}
    if meta.get("ownerReferences"):
        keep["ownerReferences"] = list(meta["ownerReferences"])
    if meta.get("deletionTimestamp"):
        keep["deletionTimestamp"] = meta["deletionTimestamp"]
    if meta.get("finalizers"):
        keep["finalizers"] = list(meta["finalizers"])
    if kind not in _OURS and not is_managed(body):
        return {"kind": kind, "metadata": keep}
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    if annotations:
        keep["annotations"] = annotations
    out: Body = {"kind": kind, "metadata": keep}
    for part in (
        "spec",
        "status",
        "data",
        "rules",
        "roleRef",
        "subjects",
        "automountServiceAccountToken",
    ):
        if part in body:
            out[part] = body[part]
    return out


def slim_pod(body: Mapping[str, Any]) -> Body:
    """What status needs of a pod: identity, labels, annotations, phase and conditions."""
    meta = body.get("metadata", {})
    status = body.get("status", {})
    keep_meta = {k: meta[k] for k in ("name", "namespace", "uid", "labels") if k in meta}
    if meta.get("annotations"):
        keep_meta["annotations"] = dict(meta["annotations"])
    if meta.get("deletionTimestamp"):
        keep_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    return {
        "kind": "Pod",
        "metadata": keep_meta,
        "status": {
            "phase": status.get("phase"),
            "conditions": status.get("conditions", []),
            "containerStatuses": status.get("containerStatuses", []),
        },
    }


def pod_keys(body: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Index keys of a pod: its pool, or the DisaggDeployment whose gateway it runs."""
    meta = body.get("metadata", {})
    labels = meta.get("labels") or {}
    namespace = meta.get("namespace", "")
    if labels.get(names.LABEL_POOL):
        return [(namespace, "pool", labels[names.LABEL_POOL])]
    if labels.get(names.LABEL_COMPONENT) == "gateway" and labels.get(names.LABEL_DEPLOYMENT):
        return [(namespace, "gateway", labels[names.LABEL_DEPLOYMENT])]
    return []


#: How long a remembered write may stand in for a watch event that has not come.
WRITTEN_TTL_SECONDS = 30.0


@dataclass(frozen=True)
class Written:
    """An object as our write left it, and the versions the cache may still show that are
    older than it: the one it was written over (None: none, a create) and our own earlier
    writes the watch has not delivered either."""

    body: Body
    older: frozenset[str | None]
    at: float


@dataclass
class Store:
    """Read-only view of the indexes: ``{index id: {key: iterable of slim bodies}}``, plus
    our own writes the watch has not delivered yet.

    In the operator the mapping holds kopf's live indexes; in tests, plain dicts of lists.
    """

    indexes: Mapping[str, Mapping[Any, Iterable[Body]]]
    written: dict[tuple[str, str, str], Written] = field(default_factory=dict)
    clock: Any = time.monotonic
    _swept_at: float = 0.0

    def _first(self, index: str, key: Any) -> Body | None:
        values = self.indexes.get(index, {}).get(key)
        if not values:
            return None
        for value in values:
            return value
        return None

    def get(self, kind: str, namespace: str, name: str) -> Body | None:
        cached = self._first(INDEX_OF_KIND[kind], (namespace, name))
        mine = self.written.get((kind, namespace, name))
        if mine is None:
            return cached
        version = (cached or {}).get("metadata", {}).get("resourceVersion")
        if version in mine.older and self.clock() - mine.at < WRITTEN_TTL_SECONDS:
            return mine.body  # the cache still shows what our write replaced
        # The watch delivered our write (or something newer), or it is overdue: trust the cache.
        self.written.pop((kind, namespace, name), None)
        return cached

    def remember(self, body: Mapping[str, Any], over: str | None) -> None:
        """Our create (``over`` None) or apply over version ``over`` answered with ``body``.

        Called from the reconcile threads: one dict assignment, atomic under the GIL."""
        kind = body.get("kind")
        meta = body.get("metadata") or {}
        if kind not in INDEX_OF_KIND or not meta.get("name") or not meta.get("resourceVersion"):
            return
        key = (str(kind), str(meta.get("namespace") or ""), str(meta["name"]))
        now = self.clock()
        if now - self._swept_at > WRITTEN_TTL_SECONDS:  # memories nobody read again
            self._swept_at = now
            # A snapshot first: ``get`` pops from the event loop's thread and other reconcile
            # threads remember meanwhile, and a dict must not change while it is iterated
            # (``list`` of a dict's items is made in one step under the GIL).
            memories = list(self.written.items())
            for stale in [k for k, w in memories if now - w.at >= WRITTEN_TTL_SECONDS]:
                self.written.pop(stale, None)
        if over == meta["resourceVersion"]:  # nothing changed: the cache is right already
            return
        older: frozenset[str | None] = frozenset({over})
        before = self.written.get(key)
        if before is not None and before.body["metadata"].get("resourceVersion") == over:
            # Written over our own earlier write the watch has not delivered either (a status
            # right after a create): the cache may show that one or what it replaced.
            older |= before.older
        self.written[key] = Written(slim(str(kind), body), older, now)

    def keys(self, kind: str) -> list[tuple[str, str]]:
        return list(self.indexes.get(INDEX_OF_KIND[kind], {}).keys())

    def pool_pods(self, namespace: str, pool: str) -> list[Body]:
        return list(self.indexes.get(POD_INDEX, {}).get((namespace, "pool", pool)) or [])

    def gateway_pods(self, namespace: str, deployment: str) -> list[Body]:
        return list(self.indexes.get(POD_INDEX, {}).get((namespace, "gateway", deployment)) or [])

    def pod_pools(self) -> dict[tuple[str, str], str]:
        """``(namespace, pod) -> pool`` for every indexed worker pod."""
        out: dict[tuple[str, str], str] = {}
        for key, pods in self.indexes.get(POD_INDEX, {}).items():
            if key[1] != "pool":
                continue
            for pod in pods:
                out[(key[0], pod["metadata"]["name"])] = key[2]
        return out

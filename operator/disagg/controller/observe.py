"""Observe: one read of everything a reconcile needs, from the cache, into an ``Observed``.

This is the only step of a reconcile that looks at the world, and it only looks at
the watch-fed cache (``store``) and the last Prometheus snapshot (``metrics``):
no API request.  The children it copies are exactly the names a plan may write
(``plan.pool_child_keys`` / ``plan.disagg_child_keys``).
"""

from __future__ import annotations

from disagg.controller.failures import FailureMemory
from disagg.controller.metrics import MetricsSnapshot
from disagg.controller.plantypes import Observed, disagg_child_keys, pool_child_keys
from disagg.controller.store import Store
from disagg.render import names


def _controller_of(obj: dict[str, object], kind: str) -> str | None:
    meta = obj.get("metadata") or {}
    assert isinstance(meta, dict)
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("name"))
    return None


def observe_pool(
    store: Store,
    namespace: str,
    name: str,
    metrics: MetricsSnapshot,
    failure: FailureMemory | None,
) -> Observed | None:
    pool = store.get("InferencePool", namespace, name)
    if pool is None:
        return None
    live = {key: store.get(key[0], namespace, key[1]) for key in pool_child_keys(name)}
    parent = sibling = None
    deployment = _controller_of(pool, "DisaggDeployment")
    if deployment:
        parent = store.get("DisaggDeployment", namespace, deployment)
        role = (pool.get("spec") or {}).get("role")
        if role in ("prefill", "decode"):
            other = names.pool_name(deployment, "decode" if role == "prefill" else "prefill")
            sibling = store.get("InferencePool", namespace, other)
    return Observed(
        obj=pool,
        live=live,
        parent=parent,
        sibling=sibling,
        pods=tuple(store.pool_pods(namespace, name)),
        pool_metrics=metrics.pool(namespace, name),
        metrics_configured=metrics.configured,
        failure=failure,
    )


def observe_disagg(
    store: Store,
    namespace: str,
    name: str,
    metrics: MetricsSnapshot,
    failure: FailureMemory | None,
) -> Observed | None:
    obj = store.get("DisaggDeployment", namespace, name)
    if obj is None:
        return None
    live = {key: store.get(key[0], namespace, key[1]) for key in disagg_child_keys(name)}
    return Observed(
        obj=obj,
        live=live,
        decisions=metrics.decisions_of(namespace, name),
        metrics_configured=metrics.configured,
        failure=failure,
    )

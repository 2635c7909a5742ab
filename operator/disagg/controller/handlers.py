"""kopf handlers: thin wiring from events to the reconciler.

Registered with the full group and version (``inferencepools.disagg.dev``), so
the Gateway API Inference Extension's ``InferencePool`` is never touched.  Create,
update, resume and a drift timer all run the same reconcile; changes of owned
Deployments and pods refresh status; a change of a child pool's replicas (its
autoscaler at work) re-reconciles the sibling pool too, because the
DisaggDeployment's guards bound the pair.  Handlers return nothing: a return
value would land in status and be pruned.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from disagg.api.versions import GROUP, VERSION
from disagg.controller.kube import Invalid, Kube, KubeError, NotFound, TransientError
from disagg.controller.reconcile import Outcome, Reconciler
from disagg.render import names

log = logging.getLogger(__name__)

POOLS = f"inferencepools.{VERSION}.{GROUP}"
DISAGGS = f"disaggdeployments.{VERSION}.{GROUP}"
MANAGED = {"app.kubernetes.io/managed-by": names.MANAGED_BY}
DRIFT_INTERVAL_SECONDS = 60.0

_reconciler: Reconciler | None = None


def configure(reconciler: Reconciler) -> None:
    """Install the reconciler the handlers use (done once by ``disagg operator``)."""
    global _reconciler
    _reconciler = reconciler


def reconciler() -> Reconciler:
    if _reconciler is None:
        configure(Reconciler(Kube.from_environment()))
    assert _reconciler is not None
    return _reconciler


#: Events posted only when the user changed something (create/update), not on every resync.
_ON_CHANGE_ONLY = frozenset({"Applied"})


def _emit(body: Any, outcome: Outcome, changed: bool) -> None:
    for type_, reason, message in outcome.events:
        if reason in _ON_CHANGE_ONLY and not changed:
            continue
        kopf.event(body, type=type_, reason=reason, message=message[:1000])


def _run(fn: Any, body: Any, changed: bool = False) -> None:
    try:
        outcome = fn(dict(body))
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=10) from exc
    except (Invalid, NotFound) as exc:
        # Reported in status by the reconciler where it can; anything else is a bug to see.
        raise kopf.TemporaryError(str(exc), delay=30) from exc
    except KubeError as exc:
        raise kopf.TemporaryError(str(exc), delay=15) from exc
    _emit(body, outcome, changed)


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]


# ------------------------------------------------------------------ InferencePool


@kopf.on.create(POOLS)
@kopf.on.update(POOLS)
@kopf.on.resume(POOLS)
def reconcile_pool(body: kopf.Body, reason: str, **_: Any) -> None:
    _run(reconciler().reconcile_pool, body, changed=reason in ("create", "update"))
    _reconcile_sibling(body)


@kopf.timer(POOLS, interval=DRIFT_INTERVAL_SECONDS, initial_delay=DRIFT_INTERVAL_SECONDS)
def pool_drift(body: kopf.Body, **_: Any) -> None:
    _run(reconciler().reconcile_pool, body)


def _reconcile_sibling(body: kopf.Body) -> None:
    labels = body.get("metadata", {}).get("labels", {})
    deployment, role = labels.get(names.LABEL_DEPLOYMENT), labels.get(names.LABEL_ROLE)
    if not deployment or role not in ("prefill", "decode"):
        return
    other = names.pool_name(deployment, "decode" if role == "prefill" else "prefill")
    namespace = body["metadata"]["namespace"]
    rec = reconciler()
    sibling = rec.kube.get_or_none(f"{GROUP}/{VERSION}", "InferencePool", namespace, other)
    if sibling is not None:
        _run(rec.reconcile_pool, sibling)
    parent = rec.kube.get_or_none(f"{GROUP}/{VERSION}", "DisaggDeployment", namespace, deployment)
    if parent is not None:
        rec.refresh_disaggdeployment_status(parent)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
def child_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A worker Deployment or pod changed: refresh its pool's (and parent's) status."""
    if type is None:  # the initial listing: resume handlers cover it
        return
    labels = body.get("metadata", {}).get("labels", {})
    namespace = body["metadata"]["namespace"]
    rec = reconciler()
    pool_name = labels.get(names.LABEL_POOL)
    try:
        if pool_name:
            pool = rec.kube.get_or_none(f"{GROUP}/{VERSION}", "InferencePool", namespace, pool_name)
            if pool is not None:
                _run(rec.reconcile_pool, pool)
        deployment = labels.get(names.LABEL_DEPLOYMENT)
        if deployment:
            parent = rec.kube.get_or_none(
                f"{GROUP}/{VERSION}", "DisaggDeployment", namespace, deployment
            )
            if parent is not None:
                rec.refresh_disaggdeployment_status(parent)
    except KubeError as exc:
        log.warning("status refresh after %s change failed: %s", body.get("kind"), exc)


# --------------------------------------------------------------- DisaggDeployment


@kopf.on.create(DISAGGS)
@kopf.on.update(DISAGGS)
@kopf.on.resume(DISAGGS)
def reconcile_disaggdeployment(body: kopf.Body, reason: str, **_: Any) -> None:
    _run(reconciler().reconcile_disaggdeployment, body, changed=reason in ("create", "update"))


@kopf.timer(DISAGGS, interval=DRIFT_INTERVAL_SECONDS, initial_delay=DRIFT_INTERVAL_SECONDS)
def disaggdeployment_drift(body: kopf.Body, **_: Any) -> None:
    _run(reconciler().reconcile_disaggdeployment, body)

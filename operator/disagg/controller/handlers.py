"""kopf wiring: watch streams feed the cache and the work queue, nothing else.

For each kind the operator reads there is one index handler (a slim copy of each
object into a kopf index, the cache ``store`` reads) and one event handler (which
only enqueues the key of the object to reconcile: the object itself for our kinds,
the controlling owner for children, the pool for pods).  kopf holds every event
handler back until all indexes are filled from their initial listings, so the
first reconcile already sees the whole cluster.

There are deliberately no create/update/resume handlers, timers or daemons: those
make kopf put a finalizer on every object and store progress annotations, so a
DisaggDeployment could not be deleted while the operator is down.  Drift is seen
through the children's watch events instead.  kopf still knows the finalizer the
previous versions added (``disagg.dev/finalizer``) and removes it from each object
on its first event.  Registered with the full group (``inferencepools.disagg.dev``):
the Gateway API Inference Extension's ``InferencePool`` is never touched.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from disagg.api.versions import GROUP, VERSION
from disagg.controller.runtime import DISAGG, POOL, Controller
from disagg.controller.store import INDEX_OF_KIND, POD_INDEX, pod_keys, slim, slim_pod
from disagg.render import names

log = logging.getLogger(__name__)

#: Finalizer of versions <= 0.1 (kopf added it for their drift timers); removed on sight.
LEGACY_FINALIZER = f"{GROUP}/finalizer"

#: kind -> (group, version, plural) of what the operator watches besides its own kinds.
CHILD_KINDS: dict[str, tuple[str, str, str]] = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "ConfigMap": ("", "v1", "configmaps"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
}
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's "last handled state" for change detection, which this operator never uses.

    kopf builds the essence of every object on every watch event (a deep copy, then a diff
    against the stored one) whether or not a create/update handler could need it; with
    only index and event handlers registered, nothing reads it.  Measured with py-spy while
    200 DisaggDeployments were created: that copy and diff were 9 % of the operator's CPU.
    A test (tests/test_kopf_registry.py) fails if a change-detecting handler is registered."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def _controller_ref(body: Any) -> tuple[str, str] | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") in (POOL, DISAGG):
            return str(ref["kind"]), str(ref["name"])
    return None


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    """A kopf registry whose handlers feed ``controller`` (no module-level state)."""
    registry = kopf.OperatorRegistry()
    delay = controller.settings.child_delay

    def indexer(kind: str) -> Any:
        def index(body: kopf.Body, namespace: str, name: str, **_: Any) -> Any:
            return {(namespace, name): slim(kind, body)}

        return index

    for kind, plural in ((DISAGG, "disaggdeployments"), (POOL, "inferencepools")):
        kopf.index(GROUP, VERSION, plural, id=INDEX_OF_KIND[kind], registry=registry)(indexer(kind))
    for kind, (group, version, plural) in CHILD_KINDS.items():
        kopf.index(group, version, plural, id=INDEX_OF_KIND[kind], registry=registry)(indexer(kind))

    @kopf.index("", "v1", "pods", id=POD_INDEX, labels=MANAGED, registry=registry)
    def pod_index(body: kopf.Body, **_: Any) -> Any:
        return {key: slim_pod(body) for key in pod_keys(body)}

    @kopf.on.event(GROUP, VERSION, "disaggdeployments", registry=registry)
    async def disagg_event(namespace: str | None, name: str, **kwargs: Any) -> None:
        controller.attach(kwargs)
        controller.enqueue(DISAGG, namespace or "", name)

    #: (namespace, name) -> the generation of each child pool last seen.
    pool_generations: dict[tuple[str, str], int | None] = {}

    @kopf.on.event(GROUP, VERSION, "inferencepools", registry=registry)
    async def pool_event(
        body: kopf.Body, namespace: str | None, name: str, type: str | None, **kwargs: Any
    ) -> None:
        controller.attach(kwargs)
        namespace = namespace or ""
        controller.enqueue(POOL, namespace, name)
        controller.enqueue_waiters("InferencePool", namespace, name)
        owner = _controller_ref(body)
        if owner and owner[0] == DISAGG:
            controller.enqueue(DISAGG, namespace, owner[1], delay)
            # The sibling's guards (P:D ratio, GPU budget) depend on this pool's spec: only
            # a new generation (or a pool coming or going) concerns it, not a status write.
            generation = None if type == "DELETED" else body.get("metadata", {}).get("generation")
            key = (namespace, name)
            if key not in pool_generations or pool_generations[key] != generation:
                for role in ("prefill", "decode"):
                    sibling = names.pool_name(owner[1], role)
                    if sibling != name:
                        controller.enqueue(POOL, namespace, sibling)
            if generation is None:
                pool_generations.pop(key, None)
            else:
                pool_generations[key] = generation

    def child_event(kind: str) -> Any:
        async def on_event(body: kopf.Body, namespace: str, name: str, **kwargs: Any) -> None:
            controller.attach(kwargs)
            owner = _controller_ref(body)
            if owner:
                controller.enqueue(owner[0], namespace, owner[1], delay)
            controller.enqueue_waiters(kind, namespace, name)

        return on_event

    for kind, (group, version, plural) in CHILD_KINDS.items():
        kopf.on.event(group, version, plural, id=f"{kind.lower()}_event", registry=registry)(
            child_event(kind)
        )

    @kopf.on.event("", "v1", "pods", labels=MANAGED, registry=registry)
    async def pod_event(body: kopf.Body, **kwargs: Any) -> None:
        controller.attach(kwargs)
        for namespace, what, name in pod_keys(body):
            kind = POOL if what == "pool" else DISAGG
            controller.enqueue(kind, namespace, name, delay)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # A registry of our own has none of kopf's default login handlers: use the
        # Kubernetes client's configuration (in-cluster, else the kubeconfig).
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = LEGACY_FINALIZER
        settings.posting.enabled = False  # Events are ours (one per distinct failure)
        # Each watch is renewed when the API server ends it (its own random 30-60 min, which
        # spreads renewals out); a dead stream is caught sooner by kopf's inactivity timeout on
        # the API server's minute bookmarks.  Renewing every 5 min cost a request per watched
        # kind each time: most of what the operator asked of the API server at rest.
        settings.watching.server_timeout = None
        settings.persistence.diffbase_storage = NoDiffBase()
        await controller.start()

    @kopf.on.probe(id="controller", registry=registry)
    def probe(**_: Any) -> dict[str, object]:
        return controller.probe()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.stop()

    return registry  # tests/test_kopf_registry.py: no handler here may need kopf's diff base

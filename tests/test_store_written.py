"""The store remembers the operator's own writes until the watch delivers them: a reconcile
that runs in between (a busy API server, a sibling's event) must not plan the same create
again, and anything newer the watch brings wins over the memory."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from disagg.controller.act import act_children, write_status
from disagg.controller.metrics import MetricsSnapshot
from disagg.controller.observe import observe_disagg
from disagg.controller.plan_disagg import plan_disagg
from disagg.controller.store import INDEX_OF_KIND, WRITTEN_TTL_SECONDS, Store
from tests.planworld import NS, World, disagg_obj

Body = dict[str, Any]


class EchoKube:
    """Answers writes the way the API server does: the object as stored, a new version."""

    def __init__(self) -> None:
        self.versions = itertools.count(500)
        self.writes: list[str] = []

    def _stored(self, obj: Body) -> Body:
        out = copy.deepcopy(obj)
        out["metadata"]["resourceVersion"] = str(next(self.versions))
        out["metadata"].setdefault("uid", f"uid-{out['metadata']['resourceVersion']}")
        return out

    def create(self, obj: Body) -> Body:
        self.writes.append(f"create {obj['kind']}/{obj['metadata']['name']}")
        return self._stored(obj)

    def apply(self, obj: Body, *, resource_version: str | None = None) -> Body:
        self.writes.append(f"apply {obj['kind']}/{obj['metadata']['name']}")
        return self._stored(obj)

    def merge_patch(
        self, api_version: str, kind: str, ns: str, name: str, body: Body, **_: Any
    ) -> Body:
        self.writes.append(f"patch {kind}/{name}")
        return self._stored({"kind": kind, "metadata": {"name": name, "namespace": ns}})

    def apply_status(
        self, api_version: str, kind: str, ns: str, name: str, status: Body, **_: Any
    ) -> Body:
        self.writes.append(f"status {kind}/{name}")
        return self._stored(
            {"kind": kind, "metadata": {"name": name, "namespace": ns}, "status": status}
        )

    def post_event(self, event: Body) -> None:
        self.writes.append("event")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _store_with(dd: Body, clock: Clock) -> Store:
    indexes: dict[str, dict[Any, list[Body]]] = {index: {} for index in INDEX_OF_KIND.values()}
    indexes[INDEX_OF_KIND["DisaggDeployment"]][(NS, dd["metadata"]["name"])] = [dd]
    return Store(indexes, clock=clock)


def _reconcile(store: Store, kube: EchoKube) -> list[str]:
    """One reconcile as the controller runs it; returns the writes it made."""
    before = len(kube.writes)
    observed = observe_disagg(store, NS, "llm", MetricsSnapshot(), None)
    assert observed is not None
    plan = plan_disagg(observed, World(disagg_obj()).config())
    outcome = act_children(kube, observed, plan, store.remember)  # type: ignore[arg-type]
    assert outcome.failure is None and not outcome.conflict
    write_status(kube, observed, plan, store.remember)  # type: ignore[arg-type]
    return kube.writes[before:]


def test_a_reconcile_before_the_watch_catches_up_does_not_create_again() -> None:
    dd = disagg_obj()
    dd["metadata"]["resourceVersion"] = "1"
    clock, kube = Clock(), EchoKube()
    store = _store_with(dd, clock)
    first = _reconcile(store, kube)
    created = [w for w in first if w.startswith("create ")]
    assert len(created) >= 8, first  # pools, Deployments, Services, ...
    # No watch event has arrived: the indexes still hold only the DisaggDeployment.
    again = _reconcile(store, kube)
    assert not [w for w in again if w.startswith(("create ", "apply "))], again


def test_what_the_watch_brings_wins_over_the_memory() -> None:
    clock = Clock()
    store = _store_with(disagg_obj(), clock)
    service = {"kind": "Service", "metadata": {"name": "s", "namespace": NS, "uid": "u1"}}
    store.remember({**service, "metadata": {**service["metadata"], "resourceVersion": "7"}}, None)
    assert store.get("Service", NS, "s")["metadata"]["resourceVersion"] == "7"  # type: ignore[index]
    # The watch delivers a later version (someone else's write after ours): it wins.
    later = {**service, "metadata": {**service["metadata"], "resourceVersion": "9"}}
    store.indexes[INDEX_OF_KIND["Service"]][(NS, "s")] = [later]  # type: ignore[index]
    assert store.get("Service", NS, "s") is later
    assert not store.written

    # An apply over version 9 is remembered while the cache still shows 9 ...
    store.remember({**service, "metadata": {**service["metadata"], "resourceVersion": "12"}}, "9")
    assert store.get("Service", NS, "s")["metadata"]["resourceVersion"] == "12"  # type: ignore[index]
    # ... and forgotten when it is overdue: a lost event cannot hide the cluster for long.
    clock.now += WRITTEN_TTL_SECONDS
    assert store.get("Service", NS, "s") is later


def test_a_create_whose_object_was_deleted_before_its_event_is_forgotten_in_time() -> None:
    clock = Clock()
    store = _store_with(disagg_obj(), clock)
    body = {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS, "resourceVersion": "3"}}
    store.remember(body, None)
    assert store.get("ConfigMap", NS, "c") is not None
    clock.now += WRITTEN_TTL_SECONDS + 1
    assert store.get("ConfigMap", NS, "c") is None  # recreated by the next reconcile
    # Memories nobody reads again are swept, so deleted objects do not pile up.
    store.remember({**body, "metadata": {**body["metadata"], "name": "d"}}, None)
    clock.now += WRITTEN_TTL_SECONDS + 1
    store.remember({**body, "metadata": {**body["metadata"], "name": "e"}}, None)
    assert set(store.written) == {("ConfigMap", NS, "e")}


def test_a_write_over_our_own_undelivered_write_keeps_standing_in() -> None:
    """A status written right after the create, both before the watch delivers either: the
    object must not vanish from the operator's view in between."""
    clock = Clock()
    store = _store_with(disagg_obj(), clock)
    meta = {"name": "p", "namespace": NS, "uid": "u"}
    store.remember({"kind": "InferencePool", "metadata": {**meta, "resourceVersion": "20"}}, None)
    status = {"kind": "InferencePool", "metadata": {**meta, "resourceVersion": "21"}, "status": {}}
    store.remember(status, "20")
    seen = store.get("InferencePool", NS, "p")
    assert seen is not None and seen["metadata"]["resourceVersion"] == "21"
    # The watch delivers the create: the status write is still newer than the cache.
    index = store.indexes[INDEX_OF_KIND["InferencePool"]]
    index[(NS, "p")] = [{"kind": "InferencePool", "metadata": {**meta, "resourceVersion": "20"}}]  # type: ignore[index]
    assert store.get("InferencePool", NS, "p")["metadata"]["resourceVersion"] == "21"  # type: ignore[index]
    # Then the status write itself: the cache has caught up and the memory is dropped.
    index[(NS, "p")] = [status]  # type: ignore[index]
    assert store.get("InferencePool", NS, "p") is status
    assert not store.written

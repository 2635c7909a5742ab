"""The controller's small parts: drift comparison, the work queue, failure classes, kube errors."""

from __future__ import annotations

import asyncio
import json

import pytest

from disagg.controller.conditions import Reason
from disagg.controller.drift import covers, in_sync, quantity, same_value, with_hash
from disagg.controller.failures import Failure, field_of
from disagg.controller.kube import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    MissingAPI,
    NotFound,
    TransientError,
    _classify,
)
from disagg.controller.workqueue import WorkQueue


@pytest.mark.parametrize(
    ("a", "b"),
    [(1, "1"), ("0.5", "500m"), ("1Gi", "1024Mi"), (2, 2.0), ("16Gi", "17179869184")],
)
def test_values_the_server_respells_are_the_same(a: object, b: object) -> None:
    assert same_value(a, b)


@pytest.mark.parametrize(("a", "b"), [(1, "2"), ("1Gi", "1G"), (True, "true"), ("x", "y")])
def test_different_values_differ(a: object, b: object) -> None:
    assert not same_value(a, b)


def test_quantity_parses_kubernetes_suffixes() -> None:
    assert quantity("1.5Gi") == 1.5 * 2**30
    assert quantity("250m") is not None and float(quantity("250m") or 0) == 0.25
    assert quantity("lots") is None


def test_covers_ignores_added_fields_but_not_changed_or_missing_ones() -> None:
    desired = {"spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}}
    assert covers(
        {"spec": {"ports": [{"port": 80, "protocol": "TCP"}], "selector": {"a": "b"}, "x": 1}},
        desired,
    )
    assert not covers({"spec": {"ports": [{"port": 81}], "selector": {"a": "b"}}}, desired)
    assert not covers(
        {"spec": {"ports": [{"port": 80}, {"port": 81}], "selector": {"a": "b"}}}, desired
    )
    assert not covers({"spec": {"ports": [{"port": 80}]}}, desired)


def test_dropping_a_field_we_used_to_set_is_drift_thanks_to_the_hash() -> None:
    before = with_hash(
        {"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}}
    )
    after = with_hash({"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}})
    assert in_sync(before, before)
    assert not in_sync(after, before), "the live object still carries label b"


async def test_the_queue_deduplicates_and_keeps_the_earliest_time() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a", 10)
    queue.add("a", 0)
    queue.add("a", 5)
    assert len(queue) == 1
    assert await asyncio.wait_for(queue.get(), 1) == "a"


async def test_a_key_added_while_processing_is_processed_again_after() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")
    assert len(queue) == 0, "not handed to a second worker while the first has it"
    queue.done(key)
    assert await asyncio.wait_for(queue.get(), 1) == "a"


async def test_a_delayed_key_waits() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("later", 0.3)
    queue.add("now")
    assert await asyncio.wait_for(queue.get(), 1) == "now"
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(queue.get(), 2) == "later"
    assert loop.time() - started >= 0.2


async def test_due_keys_go_by_priority_then_in_order() -> None:
    queue: WorkQueue[str] = WorkQueue(lambda key: 0 if key.startswith("child") else 1)
    for key in ("new-1", "new-2", "child-1", "new-3", "child-2"):
        queue.add(key)
    taken = [await asyncio.wait_for(queue.get(), 1) for _ in range(5)]
    assert taken == ["child-1", "child-2", "new-1", "new-2", "new-3"]
    queue.add("new-4")
    queue.add("child-3", 0.2)  # not due yet: what is due goes first
    assert await asyncio.wait_for(queue.get(), 1) == "new-4"
    assert await asyncio.wait_for(queue.get(), 1) == "child-3"


def _err(status: int, message: str, reason: str = "", details: object = None) -> object:
    body = {"kind": "Status", "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    return _classify(status, "x", json.dumps(body), "PATCH", "/apis/apps/v1/x")


def test_server_errors_are_sorted_into_what_the_operator_can_act_on() -> None:
    assert isinstance(_err(404, "not found", details={"name": "x"}), NotFound)
    assert isinstance(_err(404, "the server could not find the requested resource"), MissingAPI)
    assert isinstance(_err(409, "exists", "AlreadyExists"), AlreadyExists)
    assert isinstance(_err(409, "the object has been modified", "Conflict"), Conflict)
    assert isinstance(_err(422, "Deployment is invalid"), Invalid)
    forbidden = 'deployments.apps is forbidden: User "system:sa" cannot patch resource'
    assert isinstance(_err(403, forbidden), Forbidden)
    assert isinstance(_err(403, 'pods "x" is forbidden: exceeded quota'), Invalid)
    typed = "failed to create typed patch object (/x): .spec.replicas: expected numeric"
    assert isinstance(_err(500, typed), Invalid), "a 500 that no retry can fix is a rejection"
    assert isinstance(_err(500, "etcdserver: request timed out"), TransientError)
    assert isinstance(_err(429, "too many requests"), TransientError)


def test_a_rejected_child_field_is_named_as_the_users_field() -> None:
    message = (
        'Deployment.apps "llm-prefill" is invalid: '
        "spec.template.spec.tolerations[0].operator: Unsupported value"
    )
    assert field_of(message, "Deployment", None) == "spec.placement.tolerations"
    assert field_of(message, "Deployment", "prefill") == "spec.prefill.placement.tolerations"
    env = "spec.template.spec.containers[0].env[3].name: Invalid value"
    assert field_of(env, "Deployment", "decode") == "spec.engine.env"
    pool = 'InferencePool "x" is invalid: spec.autoscaling.maxReplicas: Invalid value'
    assert field_of(pool, "InferencePool", "decode") == "spec.decode.autoscaling.maxReplicas"


def test_permanent_failures_back_off_slowly_and_transient_ones_quickly() -> None:
    rejected = Failure(Reason.APPLY_REJECTED, "x")
    flaky = Failure(Reason.SERVER_ERROR, "x")
    assert rejected.permanent and not flaky.permanent
    assert [flaky.retry_after(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert flaky.retry_after(20) == 300.0
    assert rejected.retry_after(1) == 300.0 and rejected.retry_after(9) == 1800.0


class _RefusingKube:
    """A Kube whose create fails like an API server without the kind (KEDA absent)."""

    def __init__(self) -> None:
        self.calls = 0

    def create(self, obj: dict[str, object]) -> dict[str, object]:
        self.calls += 1
        if obj["kind"] == "ScaledObject":
            raise MissingAPI("/apis/keda.sh/...: the API server does not serve this kind", 404)
        return {}


def test_a_kind_the_server_does_not_serve_is_a_failure_not_a_race() -> None:
    from disagg.controller.act import act_children
    from tests.planworld import World, pool_obj

    world = World(pool_obj(replicas=2, autoscaling={"enabled": True, "engine": "keda"}))
    plan = world.plan()
    plan.defaults = None
    kube = _RefusingKube()
    outcome = act_children(kube, world.observed(), plan)  # type: ignore[arg-type]
    assert not outcome.conflict, "a conflict is retried at once: a hot loop"
    assert outcome.failure is not None and outcome.failure.reason == Reason.MISSING_API
    assert not outcome.failure.permanent and outcome.failure.retry_after(1) >= 2.0


class _LaggingKube:
    """A Kube whose Service already exists: created by ``owner`` (None: by someone else)."""

    def __init__(self, owner: str | None) -> None:
        self.owner = owner

    def create(self, obj: dict[str, object]) -> dict[str, object]:
        if obj["kind"] == "Service":
            raise AlreadyExists('services "p" already exists', 409)
        return {}

    def get_or_none(self, api_version: str, kind: str, ns: str, name: str) -> dict[str, object]:
        refs = [{"uid": self.owner, "controller": True}] if self.owner else []
        return {"metadata": {"name": name, "ownerReferences": refs}}


@pytest.mark.parametrize(("owner", "conflict"), [("ours", True), (None, False)])
def test_a_create_finding_our_own_object_looks_again_and_a_foreign_one_conflicts(
    owner: str | None, conflict: bool
) -> None:
    from disagg.controller.act import act_children
    from tests.planworld import World, pool_obj

    world = World(pool_obj(replicas=2))
    plan = world.plan()
    plan.defaults = None
    observed = world.observed()
    kube = _LaggingKube(observed.uid if owner else None)
    outcome = act_children(kube, observed, plan)  # type: ignore[arg-type]
    assert outcome.conflict is conflict
    if not conflict:
        assert outcome.failure is not None and outcome.failure.reason == Reason.NAME_CONFLICT

"""plan_pool(): what one reconcile of an InferencePool decides, without an API server."""

from __future__ import annotations

import copy

import pytest

from disagg.controller.conditions import Reason
from disagg.controller.failures import Failure, FailureMemory
from disagg.controller.plan import failure_plan
from disagg.controller.plantypes import DELETION_COST, PoolMetrics
from disagg.render.podpolicy import PodPolicy, PolicySet
from tests.planworld import NS, World, cond, disagg_obj, foreign, pool_obj


def _world(**spec: object) -> World:
    return World(pool_obj(**spec))


def test_new_pool_creates_its_deployment_and_service() -> None:
    plan = _world().plan()
    assert [(w.mode, w.ref) for w in plan.writes] == [
        ("create", "Deployment/p"),
        ("create", "Service/p"),
    ]
    assert plan.status is not None and plan.status["selector"] == "disagg.dev/pool=p"
    assert plan.status["observedGeneration"] == 1


def test_a_pool_that_can_have_two_workers_gets_a_disruption_budget() -> None:
    plan = _world(replicas=2).plan()
    assert "PodDisruptionBudget/p" in [w.ref for w in plan.writes]
    plan = _world(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3}).plan()
    assert "PodDisruptionBudget/p" in [w.ref for w in plan.writes]


def test_an_unchanged_world_plans_nothing() -> None:
    world = _world()
    last = world.converge()
    assert last.writes == [] and last.prunes == [] and last.status is None
    assert last.events == []


def test_every_child_is_written_with_a_controller_owner_reference() -> None:
    world = _world(replicas=2)
    for write in world.plan().writes:
        refs = write.obj["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": "disagg.dev/v1alpha1",
                "kind": "InferencePool",
                "name": "p",
                "uid": world.obj["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_someone_elses_edit_of_an_owned_field_is_put_back_at_the_version_read() -> None:
    world = _world()
    world.converge()
    deployment = world.live[("Deployment", "p")]
    assert deployment is not None
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil/image:1"
    deployment["metadata"]["resourceVersion"] = "777"
    plan = world.plan()
    assert [(w.mode, w.ref, w.resource_version) for w in plan.writes] == [
        ("apply", "Deployment/p", "777")
    ]


def test_fields_the_server_adds_do_not_count_as_drift() -> None:
    world = _world()
    world.converge()
    deployment = world.live[("Deployment", "p")]
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["resources"]["limits"]["nvidia.com/gpu"] = "1"  # the server's string form
    deployment["spec"]["revisionHistoryLimit"] = 10
    assert world.plan().writes == []


def test_a_spec_change_updates_the_deployment_and_the_observed_generation() -> None:
    world = _world()
    world.converge()
    world.obj["spec"]["engine"] = {"maxModelLen": 8192}
    world.obj["metadata"]["generation"] = 2
    plan = world.plan()
    assert [w.ref for w in plan.writes] == ["Deployment/p"]
    assert plan.status is not None and plan.status["observedGeneration"] == 2
    args = plan.writes[0].obj["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "8192" in args


@pytest.mark.parametrize("kind", ["Deployment", "Service"])
def test_a_same_named_object_of_someone_else_is_left_alone_and_reported(kind: str) -> None:
    world = _world()
    world.live[(kind, "p")] = foreign(kind, "p")
    plan = world.plan()
    assert plan.writes == [] and plan.prunes == []
    degraded = cond(plan.status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == Reason.NAME_CONFLICT
    assert f"{kind}/p" in degraded["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", Reason.NAME_CONFLICT)]
    assert plan.conflicts == [(kind, "p")]


def test_an_object_controlled_by_another_owner_is_a_conflict_too() -> None:
    world = _world()
    other = foreign("Deployment", "p")
    other["metadata"]["ownerReferences"] = [
        {"kind": "InferencePool", "name": "p", "uid": "someone-else", "controller": True}
    ]
    world.live[("Deployment", "p")] = other
    assert cond(world.plan().status, "Degraded")["reason"] == Reason.NAME_CONFLICT


def test_the_conflict_event_is_posted_once() -> None:
    world = _world()
    world.live[("Service", "p")] = foreign("Service", "p")
    world.apply(world.plan())
    again = world.plan()
    assert again.events == [] and again.status is None


def test_an_orphan_carrying_our_labels_is_adopted() -> None:
    world = _world()
    orphan = foreign(
        "Service",
        "p",
        labels={"app.kubernetes.io/managed-by": "disagg-operator", "disagg.dev/pool": "p"},
        resourceVersion="5",
    )
    world.live[("Service", "p")] = orphan
    plan = world.plan()
    assert ("apply", "Service/p", "5") in [(w.mode, w.ref, w.resource_version) for w in plan.writes]


def test_the_conflict_clears_when_the_other_object_goes() -> None:
    world = _world()
    world.live[("Service", "p")] = foreign("Service", "p")
    world.apply(world.plan())
    world.live[("Service", "p")] = None
    plan = world.plan()
    assert "Service/p" in [w.ref for w in plan.writes]
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Recovered")]
    assert cond(plan.status, "Degraded")["status"] == "False"


@pytest.mark.parametrize(
    ("pod_template", "field"),
    [
        ({"spec": {"hostNetwork": True}}, "spec.podTemplate.spec.hostNetwork"),
        ({"spec": {"hostPID": True}}, "spec.podTemplate.spec.hostPID"),
        (
            {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}},
            "spec.podTemplate.spec.volumes[root].hostPath",
        ),
        ({"spec": {"serviceAccountName": "cluster-admin"}}, "spec.podTemplate.spec.serviceAccount"),
        (
            {"spec": {"containers": [{"name": "vllm", "securityContext": {"privileged": True}}]}},
            "spec.podTemplate.spec.containers[vllm].securityContext.privileged",
        ),
        (
            {
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
                        }
                    ]
                }
            },
            "capabilities.add",
        ),
        (
            {"spec": {"volumes": [{"name": "s", "secret": {"secretName": "db-password"}}]}},
            "Secret 'db-password'",
        ),
        ({"spec": {"nodeName": "control-plane"}}, "spec.podTemplate.spec.nodeName"),
        ({"spec": {"automountServiceAccountToken": True}}, "automountServiceAccountToken"),
    ],
)
def test_an_unsafe_pod_template_is_refused_with_the_field_named(
    pod_template: dict[str, object], field: str
) -> None:
    plan = _world(podTemplate=pod_template).plan()
    assert plan.writes == []
    degraded = cond(plan.status, "Degraded")
    assert degraded["reason"] == Reason.UNSAFE_POD_TEMPLATE
    assert field in degraded["message"]
    assert [e.reason for e in plan.events] == [Reason.UNSAFE_POD_TEMPLATE]


def test_a_secret_read_through_engine_env_is_refused() -> None:
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]
    degraded = cond(_world(engine={"env": env}).plan().status, "Degraded")
    assert degraded["reason"] == Reason.UNSAFE_POD_TEMPLATE
    assert "spec.engine.env" in degraded["message"] and "'other'" in degraded["message"]


def test_the_model_token_secret_the_spec_names_is_allowed() -> None:
    model = {"name": "m", "tokenSecretRef": {"name": "hf", "key": "token"}}
    plan = _world(model=model).plan()
    assert [w.ref for w in plan.writes] == ["Deployment/p", "Service/p"]


def test_rdma_gets_ipc_lock_and_nothing_more() -> None:
    rdma = {"enabled": True, "resourceName": "rdma/ib"}
    assert _world(rdma=rdma).plan().writes
    extra = {
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "securityContext": {"capabilities": {"add": ["IPC_LOCK", "NET_ADMIN"]}},
                }
            ]
        }
    }
    degraded = cond(_world(rdma=rdma, podTemplate=extra).plan().status, "Degraded")
    assert "NET_ADMIN" in degraded["message"]


def test_a_namespace_an_admin_opted_in_may_use_host_networking() -> None:
    world = _world(podTemplate={"spec": {"hostNetwork": True}})
    world.policies = PolicySet(namespaces={NS: PodPolicy(allow_host_namespaces=True)})
    plan = world.plan()
    assert plan.writes and plan.writes[0].obj["spec"]["template"]["spec"]["hostNetwork"] is True


def test_workers_get_no_api_credentials() -> None:
    deployment = _world().plan().writes[0].obj
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_switching_autoscaling_off_prunes_our_autoscaler_only() -> None:
    world = _world(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3})
    world.converge()
    assert world.live[("HorizontalPodAutoscaler", "p")] is not None
    world.obj["spec"]["autoscaling"] = {"enabled": False}
    world.obj["metadata"]["generation"] = 2
    plan = world.plan()
    assert sorted(p.kind for p in plan.prunes) == ["HorizontalPodAutoscaler", "PodDisruptionBudget"]
    other = _world()
    other.live[("HorizontalPodAutoscaler", "p")] = foreign("HorizontalPodAutoscaler", "p")
    assert other.plan().prunes == []


def test_replicas_default_to_the_autoscaling_minimum() -> None:
    plan = _world(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 8}).plan()
    spec = copy.deepcopy(plan.writes[0].obj["spec"])
    assert spec["replicas"] == 2
    # ...and the pool itself gets them, or its autoscaler would see 0 and not act.
    assert plan.defaults == {"spec": {"replicas": 2}}
    assert _world(autoscaling={"enabled": True}, replicas=3).plan().defaults is None


def test_the_parents_guards_clamp_the_deployment_and_warn_once() -> None:
    parent = disagg_obj(scaling={"gpuBudget": 3})
    pool = pool_obj("llm-prefill", replicas=4)
    pool["metadata"]["labels"] = {"disagg.dev/deployment": "llm"}
    pool["metadata"]["ownerReferences"] = [
        {
            "kind": "DisaggDeployment",
            "name": "llm",
            "uid": parent["metadata"]["uid"],
            "controller": True,
        }
    ]
    world = World(pool, parent=parent)
    plan = world.plan()
    deployment = next(w for w in plan.writes if w.ref == "Deployment/llm-prefill")
    assert deployment.obj["spec"]["replicas"] == 2  # 3 GPUs: 2 prefill + 1 decode
    assert cond(plan.status, "Degraded")["reason"] == Reason.SCALING_LIMITED
    assert [e.reason for e in plan.events] == ["ScalingLimited"]
    world.apply(plan)
    assert world.plan().events == []


def test_a_permanent_failure_is_not_retried_for_the_same_generation() -> None:
    world = _world()
    failure = Failure(Reason.APPLY_REJECTED, "Deployment/p: rejected")
    world.failure = FailureMemory(1, failure, 1, retry_at=world.clock + 300)
    plan = world.plan()
    assert plan.writes == []
    assert plan.requeue_after == pytest.approx(300)
    world.obj["metadata"]["generation"] = 2
    assert world.plan().writes, "a new generation is tried at once"


def test_a_failed_write_shows_in_status_with_one_event() -> None:
    world = _world()
    world.converge()
    failure = Failure(Reason.SERVER_ERROR, "Deployment/p: the API server failed: etcd timeout")
    plan = failure_plan(world.observed(), failure, world.config())
    assert cond(plan.status, "Degraded")["reason"] == Reason.SERVER_ERROR
    assert plan.status is not None and plan.status["selector"] == "disagg.dev/pool=p"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", Reason.SERVER_ERROR)]
    world.apply(plan)
    assert failure_plan(world.observed(), failure, world.config()).events == []


def test_a_failure_reworded_is_not_announced_again_but_a_new_class_is() -> None:
    world = _world()
    world.converge()
    refused = "Deployment/p: the API server failed: webhook: connection refused"
    world.apply(
        failure_plan(world.observed(), Failure(Reason.SERVER_ERROR, refused), world.config())
    )
    timeout = Failure(Reason.SERVER_ERROR, "Service/p: the API server failed: deadline exceeded")
    plan = failure_plan(world.observed(), timeout, world.config())
    assert plan.events == []
    assert "deadline exceeded" in cond(plan.status, "Degraded")["message"]
    world.apply(plan)
    rejected = Failure(Reason.APPLY_REJECTED, "Deployment/p: rejected by the API server")
    assert [e.reason for e in failure_plan(world.observed(), rejected, world.config()).events] == [
        Reason.APPLY_REJECTED
    ]


def test_pods_forbidden_by_admission_show_the_reason_once() -> None:
    world = _world()
    world.converge()
    deployment = world.live[("Deployment", "p")]
    assert deployment is not None
    deployment["status"] = {
        "replicas": 0,
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "p-7d9-x" is forbidden: violates PodSecurity "baseline:latest"',
            }
        ],
    }
    plan = world.plan()
    degraded = cond(plan.status, "Degraded")
    assert degraded["reason"] == Reason.PODS_FORBIDDEN and "PodSecurity" in degraded["message"]
    assert cond(plan.status, "Ready")["reason"] == Reason.PODS_FORBIDDEN
    assert [e.reason for e in plan.events] == [Reason.PODS_FORBIDDEN]
    world.apply(plan)
    assert world.plan().events == []


def test_observed_load_reaches_status_and_busy_pods_cost_more_to_delete() -> None:
    world = _world(replicas=2)
    world.converge()
    world.pods = [
        {"metadata": {"name": "p-a", "labels": {}}, "status": {}},
        {"metadata": {"name": "p-b", "annotations": {DELETION_COST: "300"}}, "status": {}},
    ]
    world.pool_metrics = PoolMetrics(
        queue_depth=5.0, kv_cache_usage=0.4, pod_load={"p-a": 1, "p-b": 3}
    )
    plan = world.plan()
    assert plan.status is not None and plan.status["queueDepth"] == 5.0
    assert [(p.name, dict(p.annotations)) for p in plan.pod_patches] == [
        ("p-a", {DELETION_COST: "100"})
    ]


def test_a_pool_being_deleted_plans_nothing() -> None:
    world = _world()
    world.obj["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    plan = world.plan()
    assert plan.writes == [] and plan.status is None


def test_transition_times_are_kept_while_a_condition_holds() -> None:
    world = _world()
    world.converge()
    before = cond(world.obj["status"], "Ready")["lastTransitionTime"]
    world.obj["spec"]["engine"] = {"maxModelLen": 4096}
    world.obj["metadata"]["generation"] = 2
    world.apply(world.plan())
    assert cond(world.obj["status"], "Ready")["lastTransitionTime"] == before

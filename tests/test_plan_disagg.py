"""plan_disagg(): what one reconcile of a DisaggDeployment decides, without an API server."""

from __future__ import annotations

from disagg.controller.conditions import Reason
from disagg.controller.status import Decisions
from tests.planworld import World, cond, disagg_obj, foreign

GATEWAY_OBJECTS = [
    "ConfigMap/llm-gateway",
    "ServiceAccount/llm-gateway",
    "Role/llm-gateway",
    "RoleBinding/llm-gateway",
    "Deployment/llm-gateway",
    "Service/llm-gateway",
]


def _world(**spec: object) -> World:
    return World(disagg_obj(**spec))


def test_a_new_deployment_creates_both_pools_and_the_gateway() -> None:
    plan = _world().plan()
    refs = [w.ref for w in plan.writes if w.mode == "create"]
    assert refs[:2] == ["InferencePool/llm-prefill", "InferencePool/llm-decode"]
    assert set(GATEWAY_OBJECTS) <= set(refs)


def test_status_is_written_once_the_children_applied_the_generation() -> None:
    world = _world()
    plan = world.plan()
    assert plan.status is None  # the children are being created: nothing to say yet
    world.apply(plan)
    prefill = world.live[("InferencePool", "llm-prefill")]
    assert prefill is not None
    prefill["status"]["observedGeneration"] = 0  # the pool has not reconciled its spec yet
    assert world.plan().status is None
    prefill["status"]["observedGeneration"] = prefill["metadata"]["generation"]
    status = world.plan().status
    assert status is not None and status["observedGeneration"] == 1
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])


def test_a_degraded_pool_is_reported_at_once_without_the_generation() -> None:
    world = _world()
    world.apply(world.plan())
    prefill = world.live[("InferencePool", "llm-prefill")]
    assert prefill is not None
    prefill["status"] = {
        "observedGeneration": 0,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Unschedulable", "message": "no GPU"},
            {"type": "Degraded", "status": "True", "reason": "Unschedulable", "message": "no GPU"},
        ],
    }
    status = world.plan().status
    assert status is not None and "observedGeneration" not in status
    assert cond(status, "Degraded")["status"] == "True"


def test_a_spec_change_keeps_the_old_generation_until_the_pools_caught_up() -> None:
    world = _world()
    world.converge()
    assert world.obj["status"]["observedGeneration"] == 1
    world.obj["spec"]["engine"] = {"maxModelLen": 4096}
    world.obj["metadata"]["generation"] = 2
    plan = world.plan()
    assert {w.ref for w in plan.writes} >= {"InferencePool/llm-prefill", "InferencePool/llm-decode"}
    assert (plan.status or world.obj["status"])["observedGeneration"] == 1
    world.apply(plan)
    assert world.converge().status is None
    assert world.obj["status"]["observedGeneration"] == 2


def test_with_the_charts_cluster_role_the_gateway_binds_it_and_has_no_role_of_its_own() -> None:
    world = _world()
    world.gateway_cluster_role = "disagg-gateway"
    refs = {w.ref: w.obj for w in world.plan().writes}
    assert "Role/llm-gateway" not in refs
    assert refs["RoleBinding/llm-gateway"]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "disagg-gateway",
    }


def test_switching_to_the_cluster_role_replaces_the_binding_and_prunes_the_role() -> None:
    world = _world()
    world.converge()
    role = world.live[("Role", "llm-gateway")]
    assert role is not None
    world.gateway_cluster_role = "disagg-gateway"
    plan = world.plan()
    # roleRef cannot change in place: the binding is deleted first, the old Role with it.
    assert {(p.kind, p.name) for p in plan.prunes} == {
        ("Role", "llm-gateway"),
        ("RoleBinding", "llm-gateway"),
    }
    assert not any(w.obj["kind"] == "RoleBinding" for w in plan.writes)
    world.apply(plan)
    plan = world.plan()
    binding = next(w for w in plan.writes if w.ref == "RoleBinding/llm-gateway")
    assert binding.mode == "create" and binding.obj["roleRef"]["kind"] == "ClusterRole"
    world.apply(plan)
    last = world.converge()
    assert last.writes == [] and last.prunes == []
    assert world.live[("Role", "llm-gateway")] is None
    # And back: without the flag the Role returns and the binding points at it again.
    world.gateway_cluster_role = None
    world.converge(rounds=6)
    assert world.live[("Role", "llm-gateway")] is not None
    assert world.live[("RoleBinding", "llm-gateway")]["roleRef"]["kind"] == "Role"  # type: ignore[index]


def test_an_unchanged_deployment_plans_nothing() -> None:
    last = _world().converge()
    assert last.writes == [] and last.status is None and last.events == []


def test_an_autoscaled_pool_is_created_with_its_minimum_and_its_replicas_left_alone_after() -> None:
    scaling = {"enabled": True, "minReplicas": 2, "maxReplicas": 6}
    world = _world(prefill={"autoscaling": scaling})
    plan = world.plan()
    prefill = next(w for w in plan.writes if w.ref == "InferencePool/llm-prefill")
    assert prefill.obj["spec"]["replicas"] == 2
    world.converge()
    live = world.live[("InferencePool", "llm-prefill")]
    assert live is not None
    live["spec"]["replicas"] = 5  # the HPA scaled the pool
    live["metadata"]["resourceVersion"] = "900"
    assert world.plan().writes == []
    world.obj["spec"]["engine"] = {"maxModelLen": 4096}
    world.obj["metadata"]["generation"] = 2
    write = next(w for w in world.plan().writes if w.ref == "InferencePool/llm-prefill")
    assert "replicas" not in write.obj["spec"], "the DisaggDeployment must not own the HPA's field"
    assert write.resource_version == "900", "applied only on the version read (no lost scale)"


def test_new_autoscaling_bounds_pull_the_replicas_inside_them() -> None:
    world = _world(prefill={"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 8}})
    world.converge()
    live = world.live[("InferencePool", "llm-prefill")]
    assert live is not None
    live["spec"]["replicas"] = 7
    world.obj["spec"]["prefill"] = {
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
    }
    world.obj["metadata"]["generation"] = 2
    write = next(w for w in world.plan().writes if w.ref == "InferencePool/llm-prefill")
    assert write.obj["spec"]["replicas"] == 4


def test_fixed_replicas_are_the_deployments_to_set() -> None:
    world = _world(decode={"replicas": 3})
    world.converge()
    world.obj["spec"]["decode"] = {"replicas": 1}
    world.obj["metadata"]["generation"] = 2
    write = next(w for w in world.plan().writes if w.ref == "InferencePool/llm-decode")
    assert write.obj["spec"]["replicas"] == 1


def test_someone_elses_pool_of_the_childs_name_is_left_alone() -> None:
    world = _world()
    world.live[("InferencePool", "llm-prefill")] = foreign("InferencePool", "llm-prefill")
    plan = world.plan()
    assert plan.writes == []
    degraded = cond(plan.status, "Degraded")
    assert degraded["reason"] == Reason.NAME_CONFLICT
    assert "InferencePool/llm-prefill" in degraded["message"]
    assert plan.conflicts == [("InferencePool", "llm-prefill")]


def test_someone_elses_gateway_configmap_is_left_alone() -> None:
    world = _world()
    world.live[("ConfigMap", "llm-gateway")] = foreign("ConfigMap", "llm-gateway")
    plan = world.plan()
    assert plan.writes == []
    assert "ConfigMap/llm-gateway" in cond(plan.status, "Degraded")["message"]


def test_an_unsafe_pod_template_names_the_side_and_field() -> None:
    world = _world(decode={"podTemplate": {"spec": {"hostIPC": True}}})
    plan = world.plan()
    assert plan.writes == []
    degraded = cond(plan.status, "Degraded")
    assert degraded["reason"] == Reason.UNSAFE_POD_TEMPLATE
    assert "spec.decode.podTemplate.spec.hostIPC" in degraded["message"]


def test_a_gateway_routing_change_rewrites_only_the_gateway() -> None:
    world = _world()
    world.converge()
    world.obj["spec"]["gateway"] = {"routing": {"selective": {"minUncachedPromptTokens": 1024}}}
    world.obj["metadata"]["generation"] = 2
    refs = {w.ref for w in world.plan().writes}
    assert refs == {"ConfigMap/llm-gateway", "Deployment/llm-gateway"}


def test_guards_show_in_status() -> None:
    world = _world(prefill={"replicas": 4}, decode={"replicas": 1}, scaling={"gpuBudget": 3})
    world.converge()
    limited = cond(world.obj["status"], "ScalingLimited")
    assert limited["status"] == "True" and "budget" in limited["message"]
    assert world.obj["status"]["prefill"]["desired"] == 2


def test_disaggregation_effectiveness_comes_from_the_gateways_decisions() -> None:
    world = _world()
    world.decisions = Decisions(disaggregated=1, decode_only=99, fallback=0)
    world.converge()
    effective = cond(world.obj["status"], "DisaggregationEffective")
    assert (effective["status"], effective["reason"]) == ("False", Reason.MOSTLY_DECODE_ONLY)
    assert world.obj["status"]["disaggregatedShare"] == 0.01


def test_a_degraded_pool_degrades_the_deployment_with_its_reason() -> None:
    world = _world()
    world.converge()
    prefill = world.live[("InferencePool", "llm-prefill")]
    assert prefill is not None
    prefill["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "reason": Reason.PODS_FORBIDDEN},
        {"type": "Degraded", "status": "True", "reason": Reason.PODS_FORBIDDEN, "message": "quota"},
    ]
    plan = world.plan()
    degraded = cond(plan.status, "Degraded")
    assert (degraded["reason"], degraded["message"]) == (
        Reason.PODS_FORBIDDEN,
        "prefill pool: quota",
    )
    assert [e.reason for e in plan.events] == [Reason.PODS_FORBIDDEN]


def test_a_gateway_scaled_to_zero_is_not_a_failure() -> None:
    world = _world(gateway={"replicas": 0})
    world.converge()
    assert cond(world.obj["status"], "GatewayReady")["status"] == "True"


def test_a_gateway_image_of_the_tenants_choosing_is_refused_unless_allowed() -> None:
    from disagg.render.podpolicy import PodPolicy, PolicySet
    from tests.planworld import NS

    world = _world(
        gateway={"image": "tenant/exfiltrate:1", "apiKeySecretRef": {"name": "k", "key": "k"}}
    )
    plan = world.plan()
    assert plan.writes == []
    assert "spec.gateway.image" in cond(plan.status, "Degraded")["message"]
    world.policies = PolicySet(namespaces={NS: PodPolicy(allow_any_gateway_image=True)})
    assert world.plan().writes


def test_a_pool_without_replicas_leaves_no_null_in_status() -> None:
    world = _world()
    world.converge()
    prefill = world.live[("InferencePool", "llm-prefill")]
    assert prefill is not None
    del prefill["spec"]["replicas"]
    status = world.plan().status or world.obj["status"]

    def nulls(value: object) -> bool:
        if isinstance(value, dict):
            return any(v is None or nulls(v) for v in value.values())
        return False

    assert not nulls(status)

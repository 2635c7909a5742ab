"""What the operator renders for the data path: KV-layout labels that pair the right workers,
timing that agrees (lease, gateway budget, drains), and a highly available gateway."""

from __future__ import annotations

import json
from typing import Any

import pytest

from disagg.api import DisaggDeployment
from disagg.gateway.config import GatewayConfig
from disagg.render import render_disaggdeployment_children, render_pool_children
from disagg.render.disaggdeployment import child_pool_spec
from disagg.render.gateway import render_gateway_config

LAYOUT, TP = "disagg.dev/kv-layout", "disagg.dev/tensor-parallel"


def dd(**spec: Any) -> DisaggDeployment:
    body = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "revision": "r1"}, **spec}
    return DisaggDeployment.model_validate({"metadata": {"name": "llm"}, "spec": body})


def pod_labels(d: DisaggDeployment, role: str) -> dict[str, str]:
    spec = child_pool_spec(d.spec, role)
    objects = render_pool_children(name=f"llm-{role}", namespace="ns", spec=spec, replicas=1)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    assert LAYOUT not in deployment["spec"]["selector"]["matchLabels"]  # selectors stay fixed
    return labels


def test_prefill_and_decode_of_one_spec_share_a_kv_layout() -> None:
    d = dd(prefill={"parallelism": {"tensor": 2}}, decode={"parallelism": {"tensor": 4}})
    prefill, decode = pod_labels(d, "prefill"), pod_labels(d, "decode")
    assert prefill[LAYOUT] == decode[LAYOUT] and len(prefill[LAYOUT]) == 16
    assert (prefill[TP], decode[TP]) == ("2", "4")


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "revision": "r2"}},
        {"model": {"name": "meta-llama/Llama-3.1-70B-Instruct", "revision": "r1"}},
        {"engine": {"blockSize": 32}},
        {"engine": {"image": "vllm/vllm-openai:v0.32.0"}},
        {"engine": {"vllmVersion": "0.26.0"}},
        {"engine": {"extraArgs": ["--kv-cache-dtype", "fp8"]}},
        {"engine": {"extraArgs": ["--dtype=float16"]}},
        {"prefill": {"parallelism": {"pipeline": 2}}},
    ],
)
def test_a_change_of_kv_layout_changes_the_label(change: dict[str, Any]) -> None:
    before = pod_labels(dd(), "prefill")[LAYOUT]
    assert pod_labels(dd(**change), "prefill")[LAYOUT] != before


@pytest.mark.parametrize(
    "change",
    [
        {"engine": {"maxNumSeqs": 64}},
        {"engine": {"extraArgs": ["--enable-chunked-prefill"]}},
        {"decode": {"replicas": 3}},
        {"prefill": {"parallelism": {"tensor": 2}}},  # a label of its own, not the hash
    ],
)
def test_what_does_not_change_the_kv_layout_keeps_the_label(change: dict[str, Any]) -> None:
    assert pod_labels(dd(**change), "prefill")[LAYOUT] == pod_labels(dd(), "prefill")[LAYOUT]


def test_a_layout_flag_on_one_side_only_separates_the_pools() -> None:
    d = dd(prefill={"extraArgs": ["--kv-cache-dtype", "fp8"]})
    assert pod_labels(d, "prefill")[LAYOUT] != pod_labels(d, "decode")[LAYOUT]


@pytest.mark.parametrize("lease", [1, 3, 30, 600])
def test_gateway_timing_agrees_with_the_lease(lease: int) -> None:
    d = dd(kvTransfer={"leaseSeconds": lease}, prefill={"drain": {"timeoutSeconds": 900}})
    config = GatewayConfig.model_validate(render_gateway_config("llm", "ns", d.spec))
    kv = config.kv_transfer
    assert kv.lease_seconds == lease and kv.side_channel_port == 5600
    assert kv.handoff_budget + config.timeouts.connect_seconds < lease
    assert config.discovery.kubernetes is not None
    assert config.discovery.kubernetes.prefill_selector == "disagg.dev/pool=llm-prefill"
    assert config.model.vocab_size == 128256  # Llama-3.1's: token ids are checked


def test_the_prefill_drain_waits_for_held_kv_and_the_decode_drain_does_not() -> None:
    d = dd()
    for role, flag in (("prefill", "1"), ("decode", "0")):
        spec = child_pool_spec(d.spec, role)
        objects = render_pool_children(name=f"llm-{role}", namespace="ns", spec=spec, replicas=1)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[-2:] == ["300", flag] and "vllm:kv_cache_usage_perc" in command[2]


def test_the_gateway_is_highly_available_by_default() -> None:
    objects = render_disaggdeployment_children("llm", "ns", dd().spec)
    gateway = next(o for o in objects if o["kind"] == "Deployment")
    assert gateway["spec"]["replicas"] == 2
    assert gateway["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = gateway["spec"]["template"]["spec"]
    config = json.loads(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.json"])
    shutdown = config["shutdown"]
    assert (
        pod["terminationGracePeriodSeconds"] > shutdown["delaySeconds"] + shutdown["timeoutSeconds"]
    )
    (pdb,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]  # fmt: skip


def test_the_failure_policy_and_lease_are_always_explicit() -> None:
    spec = child_pool_spec(dd().spec, "decode")
    objects = render_pool_children(name="llm-decode", namespace="ns", spec=spec, replicas=1)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    kv = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert kv["kv_load_failure_policy"] == "recompute"
    assert kv["kv_connector_extra_config"] == {"kv_lease_duration": 30}
    strict = child_pool_spec(dd(kvTransfer={"loadFailurePolicy": "fail"}).spec, "decode")
    objects = render_pool_children(name="llm-decode", namespace="ns", spec=strict, replicas=1)
    args = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert '"kv_load_failure_policy":"fail"' in args[args.index("--kv-transfer-config") + 1]


def test_the_lease_field_wins_over_one_in_extra_config() -> None:
    d = dd(kvTransfer={"leaseSeconds": 12, "extraConfig": {"kv_lease_duration": 99, "x": 1}},
           prefill={"drain": {"timeoutSeconds": 60}})  # fmt: skip
    spec = child_pool_spec(d.spec, "prefill")
    objects = render_pool_children(name="llm-prefill", namespace="ns", spec=spec, replicas=1)
    args = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    kv = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert kv["kv_connector_extra_config"] == {"kv_lease_duration": 12, "x": 1}


def test_gateway_workers_become_processes_in_one_pod() -> None:
    def gateway_args(d: DisaggDeployment) -> list[str]:
        objects = render_disaggdeployment_children("llm", "ns", d.spec)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return args

    assert "--workers" not in gateway_args(dd())  # one process: the default
    args = gateway_args(dd(gateway={"workers": 3, "cpu": "3"}))
    assert args[args.index("--workers") + 1] == "3"

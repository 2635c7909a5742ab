"""Rendering: golden manifests per scenario, each built-in object schema-valid.

Set ``UPDATE_GOLDEN=1`` to rewrite tests/golden/ after an intended change, then
read the diff before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from disagg.api import DisaggDeployment, InferencePool
from disagg.render import render_disaggdeployment_children, render_pool_children
from disagg.render.disaggdeployment import child_pool_spec
from disagg.render.gateway import render_gateway_config
from disagg.render.metadata import owner_reference

ROOT = Path(__file__).parent.parent
GOLDEN = ROOT / "tests" / "golden"
K8S_VERSION = "1.34.0"
SOURCES = sorted(ROOT.joinpath("examples").glob("*.yaml")) + sorted(
    ROOT.joinpath("tests", "scenarios").glob("*.yaml")
)
OWNER_UID = "00000000-0000-4000-8000-000000000001"


def render_everything(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything the operator would create for one CR, down to the workers."""
    name, namespace = doc["metadata"]["name"], "default"
    if doc["kind"] == "InferencePool":
        pool = InferencePool.model_validate(doc)
        owner = owner_reference(pool.api_version, "InferencePool", name, OWNER_UID)
        return render_pool_children(
            name=name, namespace=namespace, spec=pool.spec, replicas=pool.spec.replicas, owner=owner
        )
    dd = DisaggDeployment.model_validate(doc)
    owner = owner_reference(dd.api_version, "DisaggDeployment", name, OWNER_UID)
    objects = render_disaggdeployment_children(name, namespace, dd.spec, owner=owner)
    for child in [o for o in objects if o["kind"] == "InferencePool"]:
        pool = InferencePool.model_validate(child)
        objects += render_pool_children(
            name=child["metadata"]["name"],
            namespace=namespace,
            spec=pool.spec,
            replicas=pool.spec.replicas,
            deployment=name,
            owner=owner_reference(
                child["apiVersion"], "InferencePool", child["metadata"]["name"], OWNER_UID
            ),
        )
    return objects


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_rendered_objects_match_golden(source: Path) -> None:
    doc = yaml.safe_load(source.read_text())
    rendered = yaml.safe_dump_all(render_everything(doc), sort_keys=True, width=100)
    golden = GOLDEN / f"{source.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{source.stem} differs from {golden}"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_every_builtin_object_passes_kubernetes_validate(source: Path) -> None:
    objects = render_everything(yaml.safe_load(source.read_text()))
    builtin = [
        o
        for o in objects
        if "." not in o["apiVersion"].split("/")[0] or "k8s.io" in o["apiVersion"]
    ]
    assert builtin
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_child_pools_are_admitted_by_our_own_crd(source: Path) -> None:
    from tests.admission import admit

    for obj in render_everything(yaml.safe_load(source.read_text())):
        if obj["kind"] == "InferencePool":
            assert admit(obj) == [], obj["metadata"]["name"]


def _full() -> DisaggDeployment:
    return DisaggDeployment.model_validate(
        yaml.safe_load((ROOT / "examples" / "disaggdeployment-full.yaml").read_text())
    )


def _worker(objects: list[dict[str, Any]], pool: str) -> dict[str, Any]:
    deployment = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == pool
    )
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_worker_command_line_carries_role_and_connector() -> None:
    objects = render_everything(
        yaml.safe_load((ROOT / "examples" / "disaggdeployment-full.yaml").read_text())
    )
    for pool, role, tp in (
        ("llama-70b-prefill", "kv_producer", "4"),
        ("llama-70b-decode", "kv_consumer", "8"),
    ):
        c = _worker(objects, pool)
        assert c["command"] == ["vllm", "serve", "meta-llama/Llama-3.1-70B-Instruct"]
        args = c["args"]
        assert args[args.index("--tensor-parallel-size") + 1] == tp
        assert args[args.index("--served-model-name") + 1] == "llama-3.1-70b"
        kv = json.loads(args[args.index("--kv-transfer-config") + 1])
        assert kv["kv_connector"] == "NixlConnector" and kv["kv_role"] == role
        assert kv["kv_connector_extra_config"] == {"backends": ["UCX"], "kv_lease_duration": 30}
        assert kv["kv_load_failure_policy"] == "recompute"  # explicit: vLLM's default is fail
        env = {e["name"]: e for e in c["env"]}
        assert (
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "status.podIP"
        )
        assert c["resources"]["limits"]["nvidia.com/gpu"] == int(tp)
        assert c["resources"]["limits"]["rdma/ib"] == 1
        assert c["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        assert {"name": "kv-side-channel", "containerPort": 5600, "protocol": "TCP"} in c["ports"]


def test_no_rdma_means_no_ipc_lock_no_rdma_resource() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "disaggdeployment-minimal.yaml").read_text())
    c = _worker(render_everything(doc), "llama-8b-prefill")
    assert "add" not in c["securityContext"]["capabilities"]
    assert set(c["resources"]["limits"]) == {"nvidia.com/gpu"}
    assert not any(e["name"].startswith("UCX_") for e in c["env"])


def test_hpa_is_pruned_from_desired_children_when_autoscaling_is_off() -> None:
    dd = _full()
    on = render_everything(
        json.loads(
            json.dumps({**dd.model_dump(by_alias=True, mode="json"), "metadata": {"name": "x"}})
        )
    )
    assert any(o["kind"] == "HorizontalPodAutoscaler" for o in on)
    dd.spec.prefill.autoscaling.enabled = False
    dd.spec.decode.autoscaling.enabled = False
    off = render_everything(
        {**dd.model_dump(by_alias=True, mode="json"), "metadata": {"name": "x"}}
    )
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in off)


def test_prefill_hpa_follows_gateway_queue_and_decode_follows_vllm() -> None:
    objects = render_everything(
        yaml.safe_load((ROOT / "examples" / "disaggdeployment-full.yaml").read_text())
    )
    hpas = {o["metadata"]["name"]: o for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
    prefill = hpas["llama-70b-prefill"]["spec"]
    assert prefill["scaleTargetRef"] == {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "name": "llama-70b-prefill",
    }
    assert prefill["metrics"][0]["external"]["metric"]["selector"]["matchLabels"] == {
        "pool": "llama-70b-prefill"
    }
    decode = hpas["llama-70b-decode"]["spec"]
    assert [m["pods"]["metric"]["name"] for m in decode["metrics"]] == [
        "vllm_num_requests_waiting",
        "vllm_kv_cache_usage_perc",
    ]
    assert decode["metrics"][1]["pods"]["target"]["averageValue"] == "800m"


def test_child_pool_keeps_the_autoscalers_replicas_within_bounds() -> None:
    spec = _full().spec
    assert child_pool_spec(spec, "prefill").replicas == 2
    assert child_pool_spec(spec, "prefill", current_replicas=5).replicas == 5
    assert child_pool_spec(spec, "prefill", current_replicas=50).replicas == 6
    assert child_pool_spec(spec, "decode", current_replicas=0).replicas == 1


def test_names_fit_kubernetes_limits_for_the_longest_admitted_name() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "disaggdeployment-minimal.yaml").read_text())
    doc["metadata"]["name"] = "d" * 52
    for obj in render_everything(doc):
        assert len(obj["metadata"]["name"]) <= 63


def test_gateway_config_is_accepted_by_the_gateway() -> None:
    from disagg.gateway.config import GatewayConfig

    spec = _full().spec
    config = GatewayConfig.model_validate(render_gateway_config("llama-70b", "prod", spec))
    assert config.selective.min_uncached_prompt_tokens == 512
    assert config.pools.prefill == "llama-70b-prefill"
    assert config.api_key_file and config.api_key_file.endswith("/api-key")

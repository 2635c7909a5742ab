"""Rendering precise routing: the pools it needs publish KV events, with the seed the gateway
hashes with; the gateway gets the events' ports and the tokenizer's mount."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from disagg.api import DisaggDeployment
from disagg.api.inferencepool import InferencePoolSpec
from disagg.gateway.config import GatewayConfig
from disagg.render import render_disaggdeployment_children, render_pool_children
from disagg.render.metadata import owner_reference

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "disaggdeployment-precise.yaml"


def _children(overrides: dict[str, Any] | None = None, uid: str = "u-1") -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"].update(overrides or {})
    obj = DisaggDeployment.model_validate(doc)
    owner = owner_reference("disagg.dev/v1alpha1", "DisaggDeployment", "x", uid)
    out: dict[str, Any] = {}
    for child in render_disaggdeployment_children("x", "ns", obj.spec, owner=owner):
        if child["kind"] == "InferencePool":
            spec = InferencePoolSpec.model_validate(child["spec"])
            pool = render_pool_children(
                name=child["metadata"]["name"], namespace="ns", spec=spec, replicas=1
            )
            for sub in pool:
                if sub["kind"] == "Deployment":
                    out[child["spec"]["role"]] = sub["spec"]["template"]["spec"]["containers"][0]
        elif child["kind"] == "ConfigMap":
            out["gateway"] = GatewayConfig.model_validate(json.loads(child["data"]["config.json"]))
        elif child["kind"] == "Deployment":
            out["gateway-pod"] = child["spec"]["template"]["spec"]
    return out


def _env(container: dict[str, Any], name: str) -> str | None:
    return next((e.get("value") for e in container["env"] if e["name"] == name), None)


def test_workers_publish_events_seeded_like_the_gateway_hashes() -> None:
    out = _children()
    events = out["gateway"].routing.kv_events
    assert events is not None and out["gateway"].routing.tokenizer_path
    for role in ("prefill", "decode"):
        worker = out[role]
        config = json.loads(worker["args"][worker["args"].index("--kv-events-config") + 1])
        assert config["endpoint"] == f"tcp://*:{events.port}"
        assert config["replay_endpoint"] == f"tcp://*:{events.replay_port}"
        assert {p["name"] for p in worker["ports"]} >= {"kv-events", "kv-replay"}
        assert _env(worker, "PYTHONHASHSEED") == events.hash_seed
    assert _children(uid="u-2")["gateway"].routing.kv_events.hash_seed != events.hash_seed
    mounts = out["gateway-pod"]["volumes"]
    assert {
        "name": "tokenizer",
        "persistentVolumeClaim": {"claimName": "model-cache", "readOnly": True},
    } in mounts


def test_a_pool_not_routed_precisely_publishes_nothing_and_the_users_seed_wins() -> None:
    out = _children(
        {
            "engine": {"env": [{"name": "PYTHONHASHSEED", "value": "77"}]},
            "gateway": {
                "routing": {
                    "decodeScorers": [{"type": "precisePrefix"}],
                    "prefillScorers": [{"type": "leastLoaded"}],
                    "tokenizer": {"configMapName": "tok"},
                }
            },
        }
    )
    assert "--kv-events-config" not in out["prefill"]["args"]
    assert "--kv-events-config" in out["decode"]["args"]
    assert [e["value"] for e in out["decode"]["env"] if e["name"] == "PYTHONHASHSEED"] == ["77"]
    assert out["gateway"].routing.kv_events.hash_seed == "77"
    assert out["gateway"].routing.tokenizer_path == "/var/lib/disagg-gateway/tokenizer"

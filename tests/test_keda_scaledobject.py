"""``autoscaling.engine: keda``: one ScaledObject per pool, valid for KEDA.

KEDA is not installed in the local cluster (no image registry to pull it from), so its CRD cannot
judge what we render. This test holds a JSON schema written here from KEDA's documented fields
(ScaledObject specification and the Prometheus scaler page, KEDA 2.x): required fields, types,
enums, no unknown keys at the levels we write. Beyond the schema it checks what KEDA enforces at
run time: thresholds parse as numbers, min <= max, and every trigger query is valid PromQL that
yields at most one series (checked against a real Prometheus when its binary is installed).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import jsonschema
import pytest

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.render.disaggdeployment import child_pool_spec
from disagg.render.pool import render_pool_children
from tests.test_observe_prometheus import prometheus  # noqa: F401 (fixture)

_INT = {"type": "integer", "minimum": 0}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_BEHAVIOR = {"type": "object"}  # an autoscaling/v2 HorizontalPodAutoscalerBehavior

PROMETHEUS_METADATA = {
    "type": "object",
    "required": ["serverAddress", "query", "threshold"],
    "properties": {
        name: {"type": "string", "minLength": 1}
        for name in (
            "serverAddress",
            "query",
            "threshold",
            "activationThreshold",
            "namespace",
            "customHeaders",
            "ignoreNullValues",
            "queryParameters",
            "unsafeSsl",
            "timeout",
        )
    },
    "additionalProperties": False,
}

SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"labels": _STR_MAP, "annotations": _STR_MAP},
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _INT,
                "cooldownPeriod": _INT,
                "initialCooldownPeriod": _INT,
                "idleReplicaCount": _INT,
                "minReplicaCount": _INT,
                "maxReplicaCount": _INT,
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _INT, "replicas": _INT},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": _BEHAVIOR},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            "metadata": _STR_MAP,
                        },
                        # Our triggers are all the Prometheus scaler; hold them to its fields.
                        "if": {"properties": {"type": {"const": "prometheus"}}},
                        "then": {"properties": {"metadata": PROMETHEUS_METADATA}},
                    },
                },
            },
        },
    },
}


def _keda_spec(**autoscaling: Any) -> DisaggDeploymentSpec:
    auto = {"enabled": True, "engine": "keda", "minReplicas": 1, "maxReplicas": 4, **autoscaling}
    return DisaggDeploymentSpec.model_validate(
        {
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "prefill": {"autoscaling": auto},
            "decode": {"autoscaling": auto},
        }
    )


def _children(spec: DisaggDeploymentSpec, role: str) -> list[dict[str, Any]]:
    pool = f"llm-{role}"
    return render_pool_children(
        name=pool,
        namespace="serving",
        spec=child_pool_spec(spec, role),
        replicas=1,
        deployment="llm",
        prometheus_url="http://prometheus.monitoring.svc:9090",
    )


def scaled_objects(spec: DisaggDeploymentSpec) -> dict[str, dict[str, Any]]:
    out = {}
    for role in ("prefill", "decode"):
        children = _children(spec, role)
        kinds = [c["kind"] for c in children]
        assert "HorizontalPodAutoscaler" not in kinds, kinds  # KEDA makes its own HPA
        (so,) = [c for c in children if c["kind"] == "ScaledObject"]
        out[role] = so
    return out


BEHAVIOR = {"scaleDown": {"stabilizationWindowSeconds": 60}}


@pytest.mark.parametrize("behavior", [None, BEHAVIOR])
def test_engine_keda_renders_one_valid_scaledobject_per_pool(behavior: Any) -> None:
    for role, so in scaled_objects(_keda_spec(behavior=behavior)).items():
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
        spec = so["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "disagg.dev/v1alpha1",
            "kind": "InferencePool",
            "name": f"llm-{role}",
        }
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus"
            float(trigger["metadata"]["threshold"])  # KEDA parses it as a number
            assert 'namespace="serving"' in trigger["metadata"]["query"], trigger
        rendered = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        if behavior:  # the direction it sets is the spec's; the other keeps the role default
            assert rendered["scaleDown"] == behavior["scaleDown"]
        assert rendered["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert behavior or rendered["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_role_defaults_become_triggers() -> None:
    objects = scaled_objects(_keda_spec())
    prefill = [t["metadata"]["query"] for t in objects["prefill"]["spec"]["triggers"]]
    decode = [t["metadata"]["query"] for t in objects["decode"]["spec"]["triggers"]]
    assert any("disagg_gateway_queue_depth" in q and 'pool="llm-prefill"' in q for q in prefill)
    assert any("vllm:num_requests_waiting" in q for q in prefill)
    assert any("vllm:kv_cache_usage_perc" in q for q in decode)


def test_schema_rejects_what_keda_would() -> None:
    good = scaled_objects(_keda_spec())["decode"]
    broken = [
        ("no triggers", lambda s: s["spec"].update(triggers=[])),
        ("no target name", lambda s: s["spec"]["scaleTargetRef"].pop("name")),
        ("query missing", lambda s: s["spec"]["triggers"][0]["metadata"].pop("query")),
        ("numeric threshold", lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=2)),
        ("unknown metricType", lambda s: s["spec"]["triggers"][0].update(metricType="Avg")),
        ("misspelt field", lambda s: s["spec"].update(maxReplicas=3)),
    ]
    for what, mutate in broken:
        obj = json.loads(json.dumps(good))
        mutate(obj)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, SCALED_OBJECT_SCHEMA)
            pytest.fail(f"schema accepted: {what}")


def test_trigger_queries_are_promql_with_one_answer(prometheus: str) -> None:  # noqa: F811
    for so in scaled_objects(_keda_spec()).values():
        for trigger in so["spec"]["triggers"]:
            query = urllib.parse.urlencode({"query": trigger["metadata"]["query"]})
            with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as r:
                answer = json.load(r)
            assert answer["status"] == "success", answer
            assert len(answer["data"]["result"]) <= 1  # KEDA needs a single-element vector

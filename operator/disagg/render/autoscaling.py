"""Autoscalers of a pool: an autoscaling/v2 HPA (or a KEDA ScaledObject).

Both target the InferencePool's ``/scale`` subresource, never the Deployment:
the autoscaler's desire lands in the pool's ``spec.replicas``, and the operator
applies the DisaggDeployment's cross-pool guards before the Deployment changes.

Metric names are what prometheus-adapter exposes with the rules we ship
(``:`` in vLLM's names becomes ``_``).  Prefill follows the gateway: its queue
(External metric, selected by the ``pool`` label) says when the pool is short --
the gateway admits only what the workers batch (``gateway/admission.py``), so
beyond saturation the backlog waits there -- and its busy workers (admitted work
in workers, target 1) hold the size a steady load keeps busy, so that a queue
which drains does not scale the pool straight back down (the flapping the first
design showed).  vLLM's own waiting count on the prefill pods stays as a third
signal.  Decode follows vLLM's waiting queue and KV-cache usage.  The HPA takes
the largest answer.

``behavior`` defaults per role (``DEFAULT_BEHAVIOR``) when the spec has none, or
for the direction it leaves out: scale up at once but by few workers per minute,
scale down only after the desire stayed lower for five minutes (decode ten: its
streams take long to drain), one worker at a time.  A worker needs minutes to
load weights; a shorter window would give back a worker the next burst needs.
"""

from __future__ import annotations

from typing import Any

from disagg.api.common import AutoscalingSpec, ScalingMetric
from disagg.api.versions import API_VERSION
from disagg.render.metadata import object_meta

#: Our metric name -> (HPA metric type, adapter-exposed metric name).
METRICS: dict[str, tuple[str, str]] = {
    "gatewayQueueDepth": ("External", "disagg_gateway_queue_depth"),
    "busyWorkers": ("External", "disagg_gateway_busy_workers"),
    "waitingRequests": ("Pods", "vllm_num_requests_waiting"),
    "runningRequests": ("Pods", "vllm_num_requests_running"),
    "kvCacheUsage": ("Pods", "vllm_kv_cache_usage_perc"),
}

#: Role defaults when ``autoscaling.metrics`` is empty.
DEFAULT_METRICS: dict[str, list[ScalingMetric]] = {
    "prefill": [
        ScalingMetric(name="gatewayQueueDepth", target=4),
        ScalingMetric(name="busyWorkers", target=1),
        ScalingMetric(name="waitingRequests", target=2),
    ],
    "decode": [
        ScalingMetric(name="waitingRequests", target=2),
        ScalingMetric(name="kvCacheUsage", target=0.8),
    ],
    "aggregated": [ScalingMetric(name="waitingRequests", target=4)],
}


def _direction(window: int, pods: int, period: int) -> dict[str, Any]:
    return {
        "stabilizationWindowSeconds": window,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": pods, "periodSeconds": period}],
    }


#: Role defaults of the HPA's ``behavior``, per direction (see the module docstring).
DEFAULT_BEHAVIOR: dict[str, dict[str, dict[str, Any]]] = {
    "prefill": {"scaleUp": _direction(0, 2, 60), "scaleDown": _direction(300, 1, 60)},
    "decode": {"scaleUp": _direction(0, 1, 60), "scaleDown": _direction(600, 1, 120)},
    "aggregated": {"scaleUp": _direction(0, 1, 60), "scaleDown": _direction(600, 1, 120)},
}


def effective_behavior(spec: AutoscalingSpec, role: str) -> dict[str, Any]:
    """The spec's ``behavior``, each direction it leaves out from the role's defaults."""
    return {**DEFAULT_BEHAVIOR[role], **(spec.behavior or {})}


def _quantity(value: float) -> str:
    """A target as a Kubernetes quantity: integers plain, fractions in milli-units."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def effective_metrics(spec: AutoscalingSpec, role: str) -> list[ScalingMetric]:
    return list(spec.metrics) or DEFAULT_METRICS[role]


def _hpa_metric(metric: ScalingMetric, pool: str) -> dict[str, Any]:
    kind, name = METRICS[metric.name]
    target = {"type": "AverageValue", "averageValue": _quantity(metric.target)}
    if kind == "External":
        return {
            "type": "External",
            "external": {
                "metric": {"name": name, "selector": {"matchLabels": {"pool": pool}}},
                "target": target,
            },
        }
    return {"type": "Pods", "pods": {"metric": {"name": name}, "target": target}}


def render_hpa(
    *,
    pool: str,
    namespace: str,
    role: str,
    spec: AutoscalingSpec,
    labels: dict[str, str],
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The HorizontalPodAutoscaler of a pool, scaling its InferencePool's ``/scale``."""
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": API_VERSION, "kind": "InferencePool", "name": pool},
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "metrics": [_hpa_metric(m, pool) for m in effective_metrics(spec, role)],
    }
    hpa_spec["behavior"] = effective_behavior(spec, role)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(pool, namespace, labels, owner),
        "spec": hpa_spec,
    }


#: PromQL per metric for KEDA's Prometheus scaler (it queries Prometheus directly).
_KEDA_QUERIES = {
    "gatewayQueueDepth": 'sum(disagg_gateway_queue_depth{{namespace="{ns}",pool="{pool}"}})',
    "busyWorkers": (  # a minute's mean, as the adapter rule serves it to the HPA
        'sum(avg_over_time(disagg_gateway_busy_workers{{namespace="{ns}",pool="{pool}"}}[1m]))'
    ),
    "waitingRequests": 'sum(vllm:num_requests_waiting{{namespace="{ns}",pod=~"{pool}-.*"}})',
    "runningRequests": 'sum(vllm:num_requests_running{{namespace="{ns}",pod=~"{pool}-.*"}})',
    "kvCacheUsage": 'avg(vllm:kv_cache_usage_perc{{namespace="{ns}",pod=~"{pool}-.*"}})',
}


def render_scaled_object(
    *,
    pool: str,
    namespace: str,
    role: str,
    spec: AutoscalingSpec,
    labels: dict[str, str],
    prometheus_url: str,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A KEDA ScaledObject (keda.sh/v1alpha1) for ``autoscaling.engine: keda``."""
    triggers = []
    for metric in effective_metrics(spec, role):
        query = _KEDA_QUERIES[metric.name].format(pool=pool, ns=namespace)
        # KEDA divides the query's result by the threshold to get replicas, so sums match
        # the HPA's AverageValue semantics; the average KV usage is compared as it is.
        metric_type = "Value" if metric.name == "kvCacheUsage" else "AverageValue"
        triggers.append(
            {
                "type": "prometheus",
                "metricType": metric_type,
                "metadata": {
                    "serverAddress": prometheus_url,
                    "query": query,
                    "threshold": str(metric.target),
                },
            }
        )
    so_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": API_VERSION, "kind": "InferencePool", "name": pool},
        "minReplicaCount": spec.min_replicas,
        "maxReplicaCount": spec.max_replicas,
        "triggers": triggers,
    }
    so_spec["advanced"] = {
        "horizontalPodAutoscalerConfig": {"behavior": effective_behavior(spec, role)}
    }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": object_meta(pool, namespace, labels, owner),
        "spec": so_spec,
    }

"""Observed load from Prometheus: one snapshot for all pools, refreshed in the background.

Status shows what the autoscalers see (queue depth, KV-cache usage, the share of
requests that were really disaggregated) and scale-down prefers idle workers
(pod-deletion-cost).  Reading Prometheus inside every reconcile would put a
network round trip (and a dead Prometheus' timeout) on every pod event, so a
background task asks four queries for *all* pools every ``interval`` seconds and
reconciles only the objects whose numbers changed.  Each query has a short
timeout and no retries; a failed refresh keeps no numbers (status then says
``MetricsUnavailable``) and never blocks a reconcile.

Series carry the ``namespace``/``pod`` labels of Kubernetes service discovery;
a worker pod is mapped to its pool through the cache (the pod's pool label), not
by parsing its name.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from disagg.controller.plantypes import PoolMetrics
from disagg.controller.status import WINDOW, Decisions

log = logging.getLogger(__name__)

QUERIES = {
    "gateway_queue": "sum by (namespace, pool) (disagg_gateway_queue_depth)",
    "waiting": "sum by (namespace, pod) (vllm:num_requests_waiting)",
    "running": "sum by (namespace, pod) (vllm:num_requests_running)",
    "kv_usage": "avg by (namespace, pod) (vllm:kv_cache_usage_perc)",
    "decisions": (
        "sum by (namespace, deployment, decision) "
        f"(label_replace(increase(disagg_gateway_routing_decisions_total[{WINDOW}]), "
        '"deployment", "$1", "pod", "(.+)-gateway-[^-]+-[^-]+"))'
    ),
}


@dataclass(frozen=True)
class MetricsSnapshot:
    """Per-pool and per-DisaggDeployment numbers at one moment."""

    configured: bool = False
    """The operator was given a Prometheus URL."""
    ok: bool = False
    """Every query of the last refresh was answered."""
    pools: Mapping[tuple[str, str], PoolMetrics] = field(default_factory=dict)
    decisions: Mapping[tuple[str, str], Decisions] = field(default_factory=dict)

    def pool(self, namespace: str, name: str) -> PoolMetrics | None:
        """A pool's numbers; zero load when Prometheus answered but has no series for it."""
        if not self.ok:
            return None
        return self.pools.get((namespace, name)) or PoolMetrics(queue_depth=0.0)

    def decisions_of(self, namespace: str, name: str) -> Decisions | None:
        if not self.ok:
            return None
        return self.decisions.get((namespace, name)) or Decisions(0.0, 0.0, 0.0)


class PrometheusClient:
    """Instant queries with a short timeout and no hidden retries."""

    def __init__(self, url: str, timeout_seconds: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout_seconds
        self._client = httpx.Client(timeout=timeout_seconds)

    def query(self, promql: str) -> list[dict[str, Any]] | None:
        try:
            response = self._client.get(
                f"{self.url}/api/v1/query",
                params={"query": promql, "timeout": f"{round(self.timeout * 1000)}ms"},
            )
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("Prometheus query failed (%s): %s", promql, exc)
            return None
        if body.get("status") != "success":
            return None
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def close(self) -> None:
        self._client.close()


def _value(row: Mapping[str, Any]) -> float | None:
    try:
        return float(row["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def build_snapshot(
    results: Mapping[str, list[dict[str, Any]] | None],
    pod_pools: Mapping[tuple[str, str], str],
) -> MetricsSnapshot:
    """The snapshot from the answers to :data:`QUERIES` (a None answer: not known)."""
    if any(results.get(name) is None for name in QUERIES):
        return MetricsSnapshot(configured=True)
    queue: dict[tuple[str, str], float] = defaultdict(float)
    load: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    kv: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in results["gateway_queue"] or []:
        labels, value = row.get("metric", {}), _value(row)
        if value is not None and labels.get("pool"):
            queue[(labels.get("namespace", ""), labels["pool"])] += value
    for name in ("waiting", "running", "kv_usage"):
        for row in results[name] or []:
            labels, value = row.get("metric", {}), _value(row)
            pool = pod_pools.get((labels.get("namespace", ""), labels.get("pod", "")))
            if value is None or pool is None:
                continue
            key = (labels["namespace"], pool)
            if name == "kv_usage":
                kv[key].append(value)
                continue
            if name == "waiting":
                queue[key] += value
            pods = load[key]
            pods[labels["pod"]] = pods.get(labels["pod"], 0.0) + value
    pools = {
        key: PoolMetrics(
            queue_depth=queue.get(key, 0.0),
            kv_cache_usage=(sum(kv[key]) / len(kv[key])) if kv.get(key) else None,
            pod_load=dict(load.get(key, {})),
        )
        for key in set(queue) | set(load) | set(kv)
    }
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in results["decisions"] or []:
        labels, value = row.get("metric", {}), _value(row)
        if value is None or not labels.get("deployment"):
            continue
        counts[(labels.get("namespace", ""), labels["deployment"])][labels.get("decision", "")] = (
            value
        )
    decisions = {
        key: Decisions(
            disaggregated=c.get("disaggregated", 0.0),
            decode_only=c.get("decode_only", 0.0),
            fallback=c.get("fallback", 0.0),
        )
        for key, c in counts.items()
    }
    return MetricsSnapshot(configured=True, ok=True, pools=pools, decisions=decisions)


def read_snapshot(
    client: PrometheusClient | None, pod_pools: Mapping[tuple[str, str], str]
) -> MetricsSnapshot:
    """Ask every query once (blocking; run it off the event loop)."""
    if client is None:
        return MetricsSnapshot(configured=False)
    results = {name: client.query(promql) for name, promql in QUERIES.items()}
    return build_snapshot(results, pod_pools)

"""Observed load from Prometheus, for status: queue depths and the disaggregated share.

The operator reads what the autoscalers read (the gateway's and vLLM's series, as
Prometheus scraped them with the ``namespace``/``pod`` labels of Kubernetes service
discovery) so that ``kubectl get`` shows why a pool is scaling, and whether
disaggregation is actually happening.  Prometheus being down never blocks a
reconcile: every read has a short timeout and an absent answer is ``None``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from disagg.controller.conditions import Condition, condition

log = logging.getLogger(__name__)

#: Window over which the routing decisions are counted.
WINDOW = "5m"
#: Below this share of disaggregated requests, disaggregation is not effective.
MIN_DISAGGREGATED_SHARE = 0.05
#: Above this share of fallbacks among P/D attempts, KV handoffs are failing.
MAX_FALLBACK_SHARE = 0.5


def pool_queue_query(namespace: str, pool: str) -> str:
    """Requests waiting for a pool: the gateway's queue plus vLLM's own waiting queue."""
    return (
        f'sum(disagg_gateway_queue_depth{{namespace="{namespace}",pool="{pool}"}} or vector(0))'
        f' + sum(vllm:num_requests_waiting{{namespace="{namespace}",pod=~"{pool}-.+"}}'
        " or vector(0))"
    )


def pool_kv_usage_query(namespace: str, pool: str) -> str:
    return f'avg(vllm:kv_cache_usage_perc{{namespace="{namespace}",pod=~"{pool}-.+"}})'


def pod_load_query(namespace: str, pool: str) -> str:
    """Requests running or waiting on each worker of a pool."""
    selector = f'namespace="{namespace}",pod=~"{pool}-.+"'
    return (
        f"sum by (pod) (vllm:num_requests_running{{{selector}}})"
        f" + sum by (pod) (vllm:num_requests_waiting{{{selector}}})"
    )


def decisions_query(namespace: str, deployment: str) -> str:
    selector = f'namespace="{namespace}",pod=~"{deployment}-gateway-.+"'
    return (
        f"sum by (decision) (increase(disagg_gateway_routing_decisions_total{{{selector}}}"
        f"[{WINDOW}]))"
    )


@dataclass(frozen=True)
class Decisions:
    disaggregated: float
    decode_only: float
    fallback: float

    @property
    def total(self) -> float:
        return self.disaggregated + self.decode_only + self.fallback


def effectiveness(
    decisions: Decisions | None, configured: bool = True
) -> tuple[float | None, Condition]:
    """The disaggregated share and the ``DisaggregationEffective`` condition."""
    if decisions is None:
        why = (
            "Prometheus did not answer"
            if configured
            else "the operator runs without --prometheus-url, so it cannot tell"
        )
        return None, condition("DisaggregationEffective", None, "MetricsUnavailable", why)
    if decisions.total < 1:
        return None, condition(
            "DisaggregationEffective", None, "NoTraffic", f"no requests in the last {WINDOW}"
        )
    share = decisions.disaggregated / decisions.total
    attempted = decisions.disaggregated + decisions.fallback
    if attempted >= 1 and decisions.fallback / attempted > MAX_FALLBACK_SHARE:
        return share, condition(
            "DisaggregationEffective",
            False,
            "KVHandoffFailing",
            f"{decisions.fallback:.0f} of {attempted:.0f} P/D attempts fell back to "
            f"decode-local prefill in the last {WINDOW}",
        )
    if share < MIN_DISAGGREGATED_SHARE:
        return share, condition(
            "DisaggregationEffective",
            False,
            "MostlyDecodeOnly",
            f"{share:.0%} of requests disaggregated in the last {WINDOW}: prompts are below "
            "gateway.routing.selective.minUncachedPromptTokens (or cached)",
        )
    return share, condition(
        "DisaggregationEffective",
        True,
        "Disaggregating",
        f"{share:.0%} of requests went prefill -> decode in the last {WINDOW}",
    )


class MetricsReader:
    """Reads the few series status needs; every failure is logged once and becomes None."""

    def __init__(self, url: str | None, timeout_seconds: float = 2.0) -> None:
        self.url = url
        self.timeout = timeout_seconds
        self._client: Any = None

    def _query(self, promql: str) -> list[dict[str, Any]] | None:
        if not self.url:
            return None
        try:
            if self._client is None:
                from prometheus_api_client import PrometheusConnect

                self._client = PrometheusConnect(url=self.url, disable_ssl=True)
            result: list[dict[str, Any]] = self._client.custom_query(
                promql, params={"timeout": f"{round(self.timeout * 1000)}ms"}
            )
            return result
        except Exception as exc:  # network, HTTP, parse: status must not depend on it
            log.debug("Prometheus query failed (%s): %s", promql, exc)
            return None

    def scalar(self, promql: str) -> float | None:
        result = self._query(promql)
        if not result:
            return None
        try:
            return float(result[0]["value"][1])
        except (KeyError, IndexError, ValueError):
            return None

    def per_pod(self, promql: str) -> dict[str, float] | None:
        result = self._query(promql)
        if result is None:
            return None
        out: dict[str, float] = {}
        for row in result:
            try:
                out[row["metric"]["pod"]] = float(row["value"][1])
            except (KeyError, IndexError, ValueError):
                continue
        return out

    def decisions(self, namespace: str, deployment: str) -> Decisions | None:
        result = self._query(decisions_query(namespace, deployment))
        if result is None:
            return None
        counts = {r["metric"].get("decision", ""): float(r["value"][1]) for r in result}
        return Decisions(
            disaggregated=counts.get("disaggregated", 0.0),
            decode_only=counts.get("decode_only", 0.0),
            fallback=counts.get("fallback", 0.0),
        )

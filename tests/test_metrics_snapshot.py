"""Observed load: the Prometheus snapshot of all pools, and DisaggregationEffective from it."""

from __future__ import annotations

import pytest

from disagg.controller.metrics import QUERIES, MetricsSnapshot, build_snapshot
from disagg.controller.plantypes import PoolMetrics
from disagg.controller.status import Decisions, effectiveness


@pytest.mark.parametrize(
    ("decisions", "status", "reason"),
    [
        (None, "Unknown", "MetricsUnavailable"),
        (Decisions(0, 0, 0), "Unknown", "NoTraffic"),
        (Decisions(80, 20, 0), "True", "Disaggregating"),
        (Decisions(1, 99, 0), "False", "MostlyDecodeOnly"),
        (Decisions(0, 50, 0), "False", "MostlyDecodeOnly"),
        (Decisions(10, 0, 30), "False", "KVHandoffFailing"),
        (Decisions(30, 0, 10), "True", "Disaggregating"),
    ],
)
def test_effectiveness(decisions: Decisions | None, status: str, reason: str) -> None:
    share, cond = effectiveness(decisions)
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "DisaggregationEffective",
        status,
        reason,
    )
    if decisions is not None and decisions.total:
        assert share == pytest.approx(decisions.disaggregated / decisions.total)


def _row(value: float, **labels: str) -> dict[str, object]:
    return {"metric": labels, "value": [0, str(value)]}


def _answers(**over: object) -> dict[str, object]:
    answers: dict[str, object] = {name: [] for name in QUERIES}
    answers.update(over)
    return answers


def test_worker_series_are_summed_per_pool_through_the_pods_pool_label() -> None:
    pod_pools = {("prod", "w-1"): "llm-prefill", ("prod", "w-2"): "llm-prefill"}
    snapshot = build_snapshot(
        _answers(
            gateway_queue=[_row(3, namespace="prod", pool="llm-prefill")],
            waiting=[_row(2, namespace="prod", pod="w-1"), _row(1, namespace="prod", pod="w-2")],
            running=[_row(4, namespace="prod", pod="w-1")],
            kv_usage=[
                _row(0.2, namespace="prod", pod="w-1"),
                _row(0.6, namespace="prod", pod="w-2"),
            ],
            # a pod of someone else's in the same namespace is not counted
            **{
                "decisions": [_row(7, namespace="prod", deployment="llm", decision="disaggregated")]
            },
        ),
        pod_pools,
    )
    pool = snapshot.pool("prod", "llm-prefill")
    assert pool == PoolMetrics(
        queue_depth=6.0, kv_cache_usage=pytest.approx(0.4), pod_load={"w-1": 6.0, "w-2": 1.0}
    )
    assert snapshot.decisions_of("prod", "llm") == Decisions(7.0, 0.0, 0.0)


def test_a_pool_without_series_reads_as_idle_when_prometheus_answered() -> None:
    snapshot = build_snapshot(_answers(), {})
    assert snapshot.pool("prod", "quiet") == PoolMetrics(queue_depth=0.0)
    assert snapshot.decisions_of("prod", "quiet") == Decisions(0.0, 0.0, 0.0)


def test_a_failed_query_makes_everything_unknown() -> None:
    snapshot = build_snapshot(_answers(waiting=None), {})
    assert snapshot.configured and not snapshot.ok
    assert snapshot.pool("prod", "x") is None and snapshot.decisions_of("prod", "x") is None
    assert MetricsSnapshot().pool("prod", "x") is None

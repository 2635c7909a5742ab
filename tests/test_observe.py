"""DisaggregationEffective from the gateway's routing decisions (table-driven)."""

from __future__ import annotations

import pytest

from disagg.controller.observe import Decisions, decisions_query, effectiveness, pool_queue_query


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


def test_queries_select_by_namespace_and_pool() -> None:
    q = pool_queue_query("prod", "llm-prefill")
    assert 'pool="llm-prefill"' in q and 'namespace="prod"' in q
    assert 'pod=~"llm-prefill-.+"' in q
    assert "disagg_gateway_routing_decisions_total" in decisions_query("prod", "llm")

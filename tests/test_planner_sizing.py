"""P/D sizing, the aggregated baseline, the five checks and the verdict, on scenarios whose
answer an engineer knows before running the planner."""

from __future__ import annotations

import math

import pytest

from disagg.planner import get_gpu, get_model
from disagg.planner.errors import PlannerError
from disagg.planner.plan import Plan, make_plan
from disagg.planner.queueing import erlang_c, wait_percentile_s
from disagg.planner.sizing import smallest
from disagg.planner.workload import SLO, Deployment, Workload

H100 = get_gpu("h100-sxm")


def plan(
    model: str = "llama-3.1-8b",
    slo: SLO | None = None,
    dep: Deployment | None = None,
    **workload: float,
) -> Plan:
    return make_plan(get_model(model), H100, Workload(**workload), slo, dep)  # type: ignore[arg-type]


def failed(p: Plan) -> set[str]:
    return {c.name for c in p.checks if not c.passed}


# --- queueing -------------------------------------------------------------------------------


def test_erlang_c_textbook_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0  # unstable


def test_mm1_wait_percentile_closed_form() -> None:
    lam, service = 0.5, 1.0  # rho = 0.5, mu - lambda = 0.5
    assert wait_percentile_s(1, lam, service) == pytest.approx(math.log(0.5 / 0.01) / 0.5)
    assert wait_percentile_s(1, 2.0, 1.0) == math.inf


def test_smallest_finds_the_threshold_of_a_monotone_predicate() -> None:
    assert smallest(lambda n: n >= 1) == 1
    assert smallest(lambda n: n >= 37) == 37
    assert smallest(lambda n: n * n >= 10_000, start=3) == 100
    assert smallest(lambda n: False) is None


# --- scenarios ------------------------------------------------------------------------------


def test_long_prompts_at_high_rate_disaggregate() -> None:
    p = plan(prompt_tokens=4096, output_tokens=256, arrival_rate=10.0)
    assert p.verdict == "disaggregate", [c.reason for c in p.checks]
    assert p.prefill.feasible and p.decode.feasible
    assert p.disaggregated_gpus <= p.aggregated.gpus
    assert p.prefill.ttft_p99_ms is not None and p.prefill.ttft_p99_ms <= 2000
    assert p.decode.itl_p99_ms is not None and p.decode.itl_p99_ms <= 50


def test_short_prompts_stay_aggregated_because_prefill_is_a_sliver() -> None:
    p = plan(prompt_tokens=128, output_tokens=1024, arrival_rate=5.0)
    assert p.verdict == "stay-aggregated"
    assert "decode_share" in failed(p)
    share = next(c for c in p.checks if c.name == "decode_share")
    assert share.value > 0.9 and "prefill" in share.reason


def test_high_prefix_reuse_fails_the_prefix_and_transfer_checks() -> None:
    p = plan("llama-3.1-70b", prompt_tokens=4096, arrival_rate=1.0, prefix_hit_rate=0.9)
    assert {"prefix_hit_rate", "kv_transfer"} <= failed(p)
    transfer = next(c for c in p.checks if c.name == "kv_transfer")
    assert "recomputing" in transfer.reason  # moving 1.34 GB costs more than 410 tokens


def test_tcp_fails_the_network_check_and_slows_the_transfer() -> None:
    rdma = plan(prompt_tokens=4096, arrival_rate=10.0)
    tcp = plan(prompt_tokens=4096, arrival_rate=10.0, dep=Deployment(transport="tcp"))
    assert "network" in failed(tcp) and "network" not in failed(rdma)
    assert tcp.kv_transfer_s > 3 * rdma.kv_transfer_s
    assert tcp.verdict == "stay-aggregated"


def test_a_saturated_link_fails_the_network_check() -> None:
    p = plan(
        prompt_tokens=16384,
        output_tokens=64,
        arrival_rate=40.0,
        dep=Deployment(link_gbps=25, prefill_tp=8, decode_tp=8),
    )
    network = next(c for c in p.checks if c.name == "network")
    assert not network.passed and network.value > 0.5


def test_gpu_budget_is_enforced() -> None:
    p = plan(prompt_tokens=4096, arrival_rate=10.0, dep=Deployment(gpu_budget=2))
    gpu = next(c for c in p.checks if c.name == "gpu_count")
    assert not gpu.passed and "budget of 2" in gpu.reason


def test_more_traffic_needs_more_replicas() -> None:
    low = plan(prompt_tokens=2048, arrival_rate=5.0)
    high = plan(prompt_tokens=2048, arrival_rate=50.0)
    assert high.prefill.replicas > low.prefill.replicas
    assert high.decode.replicas >= low.decode.replicas
    assert high.aggregated.gpus > low.aggregated.gpus
    assert high.disaggregated_gpus > low.disaggregated_gpus


def test_tight_itl_costs_the_aggregated_pool_more_than_the_decode_pool() -> None:
    loose = plan("llama-3.1-70b", slo=SLO(itl_p99_ms=1000), prompt_tokens=8192, arrival_rate=4.0)
    tight = plan("llama-3.1-70b", slo=SLO(itl_p99_ms=30), prompt_tokens=8192, arrival_rate=4.0)
    assert tight.aggregated.gpus > loose.aggregated.gpus  # prefill stalls must leave the tail
    assert tight.aggregated.prefill_stall_ms is not None and tight.aggregated.prefill_stall_ms > 30
    assert tight.decode.itl_p99_ms is not None and tight.decode.itl_p99_ms <= 30


def test_unreachable_ttft_is_reported_not_hidden() -> None:
    p = plan("llama-3.1-70b", slo=SLO(ttft_p99_ms=50), prompt_tokens=8192, arrival_rate=1.0)
    assert not p.prefill.feasible
    assert "unreachable" in p.prefill.reason
    assert "gpu_count" in failed(p)
    assert p.verdict == "stay-aggregated"


def test_pinned_tensor_parallelism_is_used() -> None:
    p = plan("llama-3.1-70b", dep=Deployment(prefill_tp=4, decode_tp=8, aggregated_tp=8))
    assert (p.prefill.tensor_parallel, p.decode.tensor_parallel) == (4, 8)
    assert p.aggregated.tensor_parallel == 8


def test_decode_batch_is_capped_by_the_kv_cache() -> None:
    p = plan(
        "llama-3.1-70b",
        prompt_tokens=32768,
        output_tokens=512,
        arrival_rate=0.5,
        dep=Deployment(decode_tp=4, prefill_tp=4),
    )
    assert p.decode.max_batch is not None and p.decode.max_batch < 256
    assert p.decode.kv_capacity_tokens is not None
    assert p.decode.max_batch * 32768 <= p.decode.kv_capacity_tokens


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Workload(prompt_tokens=0), "prompt and output"),
        (lambda: Workload(arrival_rate=0), "arrival rate"),
        (lambda: Workload(prefix_hit_rate=1.0), "prefix hit rate"),
        (lambda: Workload(prompt_tokens=4096, prompt_tokens_p99=100), "p99"),
        (lambda: Deployment(prefill_tp=3), "power of two"),
        (lambda: Deployment(prefill_tp=4, decode_tp=2), "multiple of prefill"),
        (lambda: Deployment(link_gbps=0), "link speed"),
        (lambda: SLO(itl_p99_ms=0), "SLOs"),
    ],
)
def test_bad_inputs_are_planner_errors(make: object, message: str) -> None:
    with pytest.raises(PlannerError, match=message):
        make()  # type: ignore[operator]


def test_a_model_that_fits_nowhere_says_so() -> None:
    with pytest.raises(PlannerError, match="does not fit"):
        make_plan(get_model("llama-3.1-405b"), get_gpu("l40s"))

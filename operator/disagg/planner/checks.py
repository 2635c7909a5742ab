"""The five checks a careful engineer runs before splitting prefill from decode, and the verdict.

Disaggregation buys ITL free of prefill stalls and independently sized pools; it costs a KV
transfer per request, a second pool to keep busy and an RDMA fabric.  Each check compares one
cost with its benefit in numbers from the plan, and says in one sentence why it passed or failed,
so the verdict can be argued with.  Thresholds are module constants with the reason beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from disagg.planner.sizing import PoolPlan
from disagg.planner.workload import SLO, Deployment, Workload

#: Below this decode share the decode pool idles; above 1 - it the prefill pool does.
MIN_PHASE_SHARE = 0.10
#: Above this prefix hit rate most prefill work is already cached on whichever worker has it.
MAX_PREFIX_HIT_RATE = 0.80
#: Share of the TTFT objective the p99 KV transfer may take.
MAX_TRANSFER_SHARE_OF_TTFT = 0.25
#: Share of a prefill replica's link its KV traffic may use on average (bursts need the rest).
MAX_LINK_UTILIZATION = 0.50

Verdict = Literal["disaggregate", "disaggregate-selectively", "stay-aggregated"]


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str
    value: float
    """The number the check judged (its unit is in the reason)."""


@dataclass(frozen=True)
class Evidence:
    """The numbers from the plan the checks read."""

    workload: Workload
    slo: SLO
    deployment: Deployment
    prefill: PoolPlan
    decode: PoolPlan
    aggregated: PoolPlan
    prefill_s: float
    """Prefill time of a mean prompt (uncached part) on one prefill replica."""
    decode_token_gpu_s: float
    """GPU-seconds per output token in the decode pool at its planned batch."""
    kv_bytes_per_request: int
    kv_transfer_s: float
    kv_transfer_p99_s: float


def check_decode_share(e: Evidence) -> Check:
    prefill_gpu_s = e.prefill_s * e.prefill.tensor_parallel
    decode_gpu_s = e.workload.output_tokens * e.decode_token_gpu_s
    share = decode_gpu_s / (prefill_gpu_s + decode_gpu_s)
    where = f"decode is {share:.0%} of the GPU time a request needs"
    if share < MIN_PHASE_SHARE:
        return Check(
            "decode_share",
            False,
            f"{where}: too little decode to protect from prefill, and a decode pool would idle",
            share,
        )
    if share > 1 - MIN_PHASE_SHARE:
        return Check(
            "decode_share",
            False,
            f"{where}: prefill is a sliver ({1 - share:.0%}), a prefill pool would idle",
            share,
        )
    return Check("decode_share", True, f"{where}: both phases carry real work", share)


def check_kv_transfer(e: Evidence) -> Check:
    ms, prefill_ms = e.kv_transfer_s * 1e3, e.prefill_s * 1e3
    budget_ms = MAX_TRANSFER_SHARE_OF_TTFT * e.slo.ttft_p99_ms
    size = f"{e.kv_bytes_per_request / 1e9:.2f} GB of KV per request takes {ms:.0f} ms"
    if e.kv_transfer_s > e.prefill_s:
        return Check(
            "kv_transfer",
            False,
            f"{size}, longer than the {prefill_ms:.0f} ms "
            "prefill it saves: recomputing on the decode worker is cheaper",
            ms,
        )
    if e.kv_transfer_p99_s * 1e3 > budget_ms:
        return Check(
            "kv_transfer",
            False,
            f"{size}; a p99 prompt's transfer "
            f"({e.kv_transfer_p99_s * 1e3:.0f} ms) exceeds {budget_ms:.0f} ms, "
            f"{MAX_TRANSFER_SHARE_OF_TTFT:.0%} of the TTFT p99 objective",
            ms,
        )
    return Check(
        "kv_transfer",
        True,
        f"{size}, less than the {prefill_ms:.0f} ms prefill and within the TTFT budget",
        ms,
    )


def check_prefix_hit_rate(e: Evidence) -> Check:
    w, threshold = e.workload, e.deployment.min_uncached_prompt_tokens
    hit, uncached = w.prefix_hit_rate, w.prompt_tokens - w.cached_tokens(w.prompt_tokens)
    if hit > MAX_PREFIX_HIT_RATE:
        return Check(
            "prefix_hit_rate",
            False,
            f"{hit:.0%} of prompt tokens are cached: "
            "prefill is mostly a cache hit, keep it next to decode",
            hit,
        )
    if uncached < threshold:
        return Check(
            "prefix_hit_rate",
            False,
            f"the mean uncached prompt is {uncached} tokens, "
            f"under the {threshold}-token selective threshold: most requests "
            "would skip the prefill pool",
            hit,
        )
    return Check(
        "prefix_hit_rate",
        True,
        f"{hit:.0%} prefix reuse leaves {uncached} uncached tokens per prompt to prefill remotely",
        hit,
    )


def check_gpu_count(e: Evidence) -> Check:
    split = e.prefill.gpus + e.decode.gpus
    together = e.aggregated.gpus
    budget = e.deployment.gpu_budget
    value = float(split)
    if not (e.prefill.feasible and e.decode.feasible):
        return Check(
            "gpu_count",
            False,
            "the disaggregated pools cannot meet the SLOs: "
            f"{e.prefill.reason if not e.prefill.feasible else e.decode.reason}",
            value,
        )
    if budget and split > budget:
        return Check(
            "gpu_count",
            False,
            f"{split} GPUs (prefill {e.prefill.gpus} + decode "
            f"{e.decode.gpus}) exceed the budget of {budget}",
            value,
        )
    if not e.aggregated.feasible:
        return Check(
            "gpu_count",
            True,
            f"{split} GPUs disaggregated; aggregated serving cannot meet the SLOs at any size",
            value,
        )
    if split > together:
        return Check(
            "gpu_count",
            False,
            f"{split} GPUs disaggregated vs {together} aggregated for the same SLOs",
            value,
        )
    return Check(
        "gpu_count",
        True,
        f"{split} GPUs disaggregated vs {together} aggregated for the same SLOs",
        value,
    )


def check_network(e: Evidence) -> Check:
    d = e.deployment
    per_replica_rate = e.workload.arrival_rate / max(e.prefill.replicas, 1)
    utilization = per_replica_rate * e.kv_bytes_per_request * 8 / (d.link_gbps * 1e9)
    if not d.is_rdma:
        return Check(
            "network",
            False,
            "KV over TCP: NIXL stages through host memory and the "
            "kernel network stack, an order of magnitude slower than RDMA "
            "(ib, roce or efa)",
            utilization,
        )
    if utilization > MAX_LINK_UTILIZATION:
        return Check(
            "network",
            False,
            f"each prefill replica's KV traffic needs "
            f"{utilization:.0%} of its {d.link_gbps:g} Gb/s link (limit "
            f"{MAX_LINK_UTILIZATION:.0%}): transfers will queue",
            utilization,
        )
    return Check(
        "network",
        True,
        f"{d.transport} RDMA at {d.link_gbps:g} Gb/s, {utilization:.0%} used by KV traffic",
        utilization,
    )


CHECKS = (
    check_decode_share,
    check_kv_transfer,
    check_prefix_hit_rate,
    check_gpu_count,
    check_network,
)


def run_checks(e: Evidence) -> list[Check]:
    return [check(e) for check in CHECKS]


def verdict(checks: list[Check]) -> tuple[Verdict, str]:
    """All pass: disaggregate.  Only the prefix check fails: disaggregate the long uncached
    prompts and serve the rest decode-only (selective).  Anything else: stay aggregated."""
    failed = [c.name for c in checks if not c.passed]
    if not failed:
        return "disaggregate", "all five checks pass"
    if failed == ["prefix_hit_rate"]:
        return "disaggregate-selectively", (
            "only prefix reuse argues against it: disaggregate long uncached prompts and "
            "serve cached or short ones decode-only"
        )
    return "stay-aggregated", f"failed: {', '.join(failed)}"

"""Replica counts: the smallest prefill, decode and aggregated pools that meet the SLOs at the rate.

Each pool is sized by the same pattern: a predicate "n replicas meet the objectives" that is
monotone in ``n`` (more replicas only lower utilisation, queueing and batch size), searched by
doubling then bisection, so a rate of 10,000 req/s costs a few dozen evaluations, not 10,000.

* **Prefill** replicas are M/M/c servers of one prompt each: TTFT p99 = Erlang C wait +
  prefill of a p99 prompt + KV transfer + the first decode step; utilisation stays <= 85%.
* **Decode** replicas batch sequences: by Little's law a replica running ``b`` sequences emits
  ``b / step(b)`` tokens/s; the batch is capped by ``--max-num-seqs`` and by the KV cache, and
  ITL p99 is the step time at the batch's 99th percentile (Poisson: ``b + 2.33 sqrt(b)``).
* **Aggregated** replicas do both: prefill takes its share of GPU time away from decode, and a
  decode step that carries a prefill chunk (chunked prefill) stalls every running stream.  When
  more than 1% of steps carry a chunk, the stall is in the ITL p99 -- the interference that
  disaggregation removes.  The only cure in aggregated serving is more replicas, which is the
  GPU cost the comparison shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from disagg.planner.hardware import GiB, GPUSpec
from disagg.planner.memory import kv_capacity_tokens
from disagg.planner.models import ModelSpec
from disagg.planner.queueing import wait_percentile_s
from disagg.planner.roofline import (
    Efficiency,
    decode_step_time_s,
    prefill_time_s,
    request_overhead_s,
)
from disagg.planner.workload import SLO, Deployment, Workload

#: Highest utilisation a pool is planned at: above it queues grow without bound on bursts.
MAX_UTILIZATION = 0.85
#: Share of the KV cache planned to be in use (vLLM preempts sequences when it runs out).
KV_HEADROOM = 0.90
#: 99th percentile of a Poisson batch around its mean b is about b + Z99 * sqrt(b).
Z99 = 2.33
#: Steps that may carry a prefill chunk before the stall shows in the ITL p99.
STALL_TAIL = 0.01
MAX_REPLICAS = 100_000


@dataclass(frozen=True)
class PoolPlan:
    """One pool's size and the latencies it is predicted to deliver."""

    role: str
    """``prefill``, ``decode`` or ``aggregated``."""
    replicas: int
    tensor_parallel: int
    feasible: bool
    """Whether the SLOs are met at all (if not, ``reason`` says why and ``replicas`` is the
    count that at least carries the load)."""
    reason: str
    """What determined the count (or why the SLO cannot be met)."""
    ttft_p99_ms: float | None = None
    itl_p99_ms: float | None = None
    batch_per_replica: float | None = None
    """Decode: mean running sequences per replica."""
    max_batch: int | None = None
    """Decode: the batch cap (max-num-seqs or KV cache, whichever is smaller)."""
    kv_capacity_tokens: int | None = None
    utilization: float | None = None
    """Prefill: share of the pool's time busy prefilling."""
    prefill_stall_ms: float | None = None
    """Aggregated: how long a decode step carrying a prefill chunk is stalled."""
    stalled_step_share: float | None = None
    """Aggregated: share of decode steps that carry a prefill chunk (above 1% the stall is in
    the ITL p99; below it, it is still in the p99.9 and in most requests' worst gap)."""

    @property
    def gpus(self) -> int:
        return self.replicas * self.tensor_parallel


@dataclass(frozen=True)
class Inputs:
    """Everything a sizing function needs, bundled once."""

    model: ModelSpec
    gpu: GPUSpec
    workload: Workload
    slo: SLO
    deployment: Deployment
    efficiency: Efficiency
    kv_transfer_p99_s: float

    def prefill_s(self, prompt: int, tp: int) -> float:
        cached = self.workload.cached_tokens(prompt)
        return prefill_time_s(self.model, self.gpu, prompt - cached, tp, cached, self.efficiency)

    def step_s(self, batch: float, tp: int) -> float:
        context = self.workload.prompt_tokens + self.workload.output_tokens / 2
        b = max(1, math.ceil(batch))
        return decode_step_time_s(self.model, self.gpu, b, context, tp, self.efficiency)

    def chunk_tokens(self) -> int:
        default = 8192 if self.gpu.memory_bytes >= 70 * GiB else 2048
        return self.deployment.chunk_tokens or default


def smallest(ok: Callable[[int], bool], start: int = 1) -> int | None:
    """Smallest n >= start with ok(n), for a monotone ok; None if none up to MAX_REPLICAS."""
    n = max(1, start)
    if ok(n):
        return n
    hi = n * 2
    while not ok(hi):
        if hi >= MAX_REPLICAS:
            return None
        n, hi = hi, min(hi * 2, MAX_REPLICAS)
    while hi - n > 1:
        mid = (n + hi) // 2
        n, hi = (n, mid) if ok(mid) else (mid, hi)
    return hi


def _batch_for_rate(inp: Inputs, tp: int, tokens_per_s: float, cap: int) -> float | None:
    """Mean batch at which one replica emits ``tokens_per_s``; None if even ``cap`` cannot."""
    if cap < 1 or cap / inp.step_s(cap, tp) < tokens_per_s:
        return None
    lo, hi = 0.0, float(cap)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid / inp.step_s(mid, tp) < tokens_per_s else (lo, mid)
    return hi


def _p99_batch(batch: float, cap: int) -> float:
    return min(float(cap), batch + Z99 * math.sqrt(batch))


def size_decode(inp: Inputs, tp: int) -> PoolPlan:
    w, d = inp.workload, inp.deployment
    capacity = kv_capacity_tokens(inp.model, inp.gpu, tp, d.gpu_memory_utilization)
    footprint = w.prompt_tokens + w.output_tokens / 2
    cap = min(d.max_num_seqs, int(capacity * KV_HEADROOM / footprint))
    if capacity < w.prompt_p99 + w.output_p99:
        return PoolPlan(
            replicas=0,
            feasible=False,
            max_batch=0,
            role="decode",
            tensor_parallel=tp,
            kv_capacity_tokens=capacity,
            reason=f"weights + one p99 sequence do not fit in tp={tp}",
        )
    cap = max(cap, 1)
    rate = w.arrival_rate * w.output_tokens
    slo_s = inp.slo.itl_p99_ms / 1e3

    def batch(n: int) -> float | None:
        return _batch_for_rate(inp, tp, rate / n, cap)

    def meets(n: int) -> bool:
        b = batch(n)
        return b is not None and inp.step_s(_p99_batch(b, cap), tp) <= slo_s

    def carries(n: int) -> bool:
        return batch(n) is not None

    n = smallest(meets)
    feasible = n is not None
    if n is None:
        n = smallest(carries) or MAX_REPLICAS
        reason = (
            f"ITL p99 {inp.slo.itl_p99_ms:g} ms unreachable: one decode step at batch 1 "
            f"takes {inp.step_s(1, tp) * 1e3:.1f} ms at tp={tp}"
        )
    b = batch(n) or 1.0
    itl = inp.step_s(_p99_batch(b, cap), tp)
    if feasible:
        limit = "KV cache" if cap < d.max_num_seqs else "max-num-seqs"
        reason = (
            f"{rate:,.0f} output tokens/s at a mean batch of {b:.1f} "
            f"(cap {cap}, {limit}) within ITL p99"
        )
    return PoolPlan(
        replicas=n,
        feasible=feasible,
        reason=reason,
        itl_p99_ms=itl * 1e3,
        batch_per_replica=b,
        max_batch=cap,
        role="decode",
        tensor_parallel=tp,
        kv_capacity_tokens=capacity,
    )


def size_prefill(inp: Inputs, tp: int, first_step_s: float) -> PoolPlan:
    w = inp.workload
    capacity = kv_capacity_tokens(inp.model, inp.gpu, tp, inp.deployment.gpu_memory_utilization)
    if capacity < w.prompt_p99:
        return PoolPlan(
            replicas=0,
            feasible=False,
            role="prefill",
            tensor_parallel=tp,
            kv_capacity_tokens=capacity,
            reason=f"weights + a p99 prompt do not fit in tp={tp}",
        )
    service = inp.prefill_s(w.prompt_tokens, tp)
    fixed = inp.prefill_s(w.prompt_p99, tp) + inp.kv_transfer_p99_s + first_step_s
    fixed += request_overhead_s(w.prompt_p99, inp.efficiency)
    slo_s = inp.slo.ttft_p99_ms / 1e3
    least = max(1, math.ceil(w.arrival_rate * service / MAX_UTILIZATION))

    def ttft(n: int) -> float:
        return wait_percentile_s(n, w.arrival_rate, service) + fixed

    n = smallest(lambda k: ttft(k) <= slo_s, least)
    feasible = n is not None
    if n is None:
        n = least
        reason = (
            f"TTFT p99 {inp.slo.ttft_p99_ms:g} ms unreachable: prefill of a p99 prompt "
            f"+ KV transfer + first step take {fixed * 1e3:.0f} ms at tp={tp}"
        )
    elif n == least:
        reason = f"load: {w.arrival_rate * service:.2f} replicas busy at {MAX_UTILIZATION:.0%}"
    else:
        reason = "TTFT p99 (queueing wait)"
    return PoolPlan(
        replicas=n,
        feasible=feasible,
        reason=reason,
        ttft_p99_ms=ttft(n) * 1e3,
        utilization=w.arrival_rate * service / n,
        role="prefill",
        tensor_parallel=tp,
        kv_capacity_tokens=capacity,
    )


def size_aggregated(inp: Inputs, tp: int) -> PoolPlan:
    w, d = inp.workload, inp.deployment
    capacity = kv_capacity_tokens(inp.model, inp.gpu, tp, d.gpu_memory_utilization)
    footprint = w.prompt_tokens + w.output_tokens / 2
    cap = max(1, min(d.max_num_seqs, int(capacity * KV_HEADROOM / footprint)))
    if capacity < w.prompt_p99 + w.output_p99:
        return PoolPlan(
            replicas=0,
            feasible=False,
            max_batch=0,
            role="aggregated",
            tensor_parallel=tp,
            kv_capacity_tokens=capacity,
            reason=f"weights + one p99 sequence do not fit in tp={tp}",
        )
    uncached = w.prompt_tokens - w.cached_tokens(w.prompt_tokens)
    chunk = inp.chunk_tokens()
    chunks = math.ceil(uncached / chunk)
    stall = prefill_time_s(
        inp.model,
        inp.gpu,
        min(chunk, uncached),
        tp,
        w.cached_tokens(w.prompt_tokens),
        inp.efficiency,
    )
    stall -= inp.efficiency.step_overhead_s  # the step pays its own overhead once
    prefill = inp.prefill_s(w.prompt_tokens, tp)
    prefill_p99 = inp.prefill_s(w.prompt_p99, tp)
    rate = w.arrival_rate * w.output_tokens

    def evaluate(n: int) -> tuple[float, float, float, float] | None:
        """(batch, ttft p99 s, itl p99 s, stalled step share) at n replicas, or None if n
        replicas cannot carry the load (decode fills whatever time prefill leaves)."""
        share = w.arrival_rate / n * prefill
        if share >= MAX_UTILIZATION:
            return None
        b = _batch_for_rate(inp, tp, rate / n / (1 - share), cap)
        if b is None:
            return None
        step = inp.step_s(b, tp)
        stalled = w.arrival_rate / n * chunks * step
        itl = inp.step_s(_p99_batch(b, cap), tp) + (stall if stalled > STALL_TAIL else 0.0)
        service = prefill + chunks * step
        p99_chunks = math.ceil((w.prompt_p99 - w.cached_tokens(w.prompt_p99)) / chunk)
        ttft = wait_percentile_s(n, w.arrival_rate, service) + prefill_p99 + p99_chunks * step
        ttft += request_overhead_s(w.prompt_p99, inp.efficiency)
        return b, ttft, itl, stalled

    def meets(n: int) -> bool:
        r = evaluate(n)
        return (
            r is not None and r[1] * 1e3 <= inp.slo.ttft_p99_ms and r[2] * 1e3 <= inp.slo.itl_p99_ms
        )

    n = smallest(meets)
    feasible = n is not None
    if n is None:
        n = smallest(lambda k: evaluate(k) is not None) or MAX_REPLICAS
        reason = "SLOs unreachable in aggregated serving at any replica count"
    else:
        carry = smallest(lambda k: evaluate(k) is not None) or n
        reason = (
            "load"
            if n == carry
            else f"ITL/TTFT p99: {n - carry} replicas beyond the load to keep prefill "
            f"stalls ({stall * 1e3:.0f} ms per chunk) out of the ITL tail"
        )
    r = evaluate(n)
    b, ttft, itl, stalled = r if r is not None else (cap, math.inf, math.inf, 1.0)
    return PoolPlan(
        replicas=n,
        feasible=feasible,
        reason=reason,
        ttft_p99_ms=ttft * 1e3,
        itl_p99_ms=itl * 1e3,
        batch_per_replica=b,
        max_batch=cap,
        prefill_stall_ms=stall * 1e3,
        stalled_step_share=min(stalled, 1.0),
        role="aggregated",
        tensor_parallel=tp,
        kv_capacity_tokens=capacity,
    )

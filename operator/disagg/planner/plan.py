"""The plan: size both architectures for the same workload and SLOs, then judge.

:func:`make_plan` is the planner's one entry point.  It tries every tensor-parallel size that
fits (unless pinned), keeps the cheapest pools that meet the objectives -- prefill and decode as
a pair, because NIXL needs decode's TP to be a multiple of prefill's -- sizes an aggregated pool
for the same objectives as the baseline, and runs the checks.  :meth:`Plan.to_dict` is the
machine-readable form (``disagg plan --json``); its key names are a public interface.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from disagg.planner.checks import Check, Evidence, Verdict, run_checks, verdict
from disagg.planner.errors import PlannerError
from disagg.planner.hardware import GPUSpec
from disagg.planner.memory import TP_CANDIDATES, kv_capacity_tokens
from disagg.planner.models import ModelSpec, kv_bytes_per_token
from disagg.planner.roofline import DEFAULT_EFFICIENCY, Efficiency, transfer_time_s
from disagg.planner.sizing import (
    Inputs,
    PoolPlan,
    size_aggregated,
    size_decode,
    size_prefill,
)
from disagg.planner.workload import SLO, Deployment, Workload

#: NIXL over TCP (UCX tcp transport, bounce buffers in host memory) reaches roughly this share
#: of line rate; a rule of thumb, not a measurement.
TCP_LINK_EFFICIENCY = 0.25
#: Batch sizes the decode-step table shows.
STEP_TABLE_BATCHES = (1, 8, 32, 64, 128, 256)


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    gpu: GPUSpec
    workload: Workload
    slo: SLO
    deployment: Deployment
    efficiency: Efficiency
    kv_bytes_per_token: int
    kv_bytes_per_request: int
    kv_transfer_s: float
    kv_transfer_p99_s: float
    prefill_s: float
    """Prefill of a mean prompt's uncached part on one prefill replica."""
    decode_step_s: dict[int, float]
    """Decode step time by batch size, decode TP, mean context."""
    prefill: PoolPlan
    decode: PoolPlan
    aggregated: PoolPlan
    checks: list[Check]
    verdict: Verdict
    verdict_reason: str

    @property
    def disaggregated_gpus(self) -> int:
        return self.prefill.gpus + self.decode.gpus

    def to_dict(self) -> dict[str, Any]:
        w = self.workload
        return {
            "model": self.model.name,
            "gpu": self.gpu.name,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes_per_request": self.kv_bytes_per_request,
            "kv_transfer_ms": self.kv_transfer_s * 1e3,
            "kv_transfer_p99_ms": self.kv_transfer_p99_s * 1e3,
            "link_gbps": self.deployment.link_gbps,
            "transport": self.deployment.transport,
            "prefill_ms": self.prefill_s * 1e3,
            "decode_step_ms": {str(b): s * 1e3 for b, s in self.decode_step_s.items()},
            "workload": asdict(w),
            "slo": asdict(self.slo),
            "prefill": _pool_dict(self.prefill),
            "decode": _pool_dict(self.decode),
            "aggregated": _pool_dict(self.aggregated),
            "disaggregated_gpus": self.disaggregated_gpus,
            "aggregated_gpus": self.aggregated.gpus,
            "checks": [asdict(c) for c in self.checks],
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "efficiency": asdict(self.efficiency),
        }


def _pool_dict(pool: PoolPlan) -> dict[str, Any]:
    return {**asdict(pool), "gpus": pool.gpus}


def _candidates(
    pinned: int, model: ModelSpec, gpu: GPUSpec, d: Deployment, tokens: int
) -> list[int]:
    if pinned:
        return [pinned]
    fitting = [
        tp
        for tp in TP_CANDIDATES
        if kv_capacity_tokens(model, gpu, tp, d.gpu_memory_utilization) >= tokens
    ]
    if not fitting:
        raise PlannerError(
            f"{model.name} ({model.weight_bytes / 1e9:.0f} GB of weights) does not fit with one "
            f"{tokens}-token sequence on {max(TP_CANDIDATES)} x {gpu.name}"
        )
    return fitting


def _cost(pool: PoolPlan) -> tuple[bool, int, float]:
    return (not pool.feasible, pool.gpus, pool.ttft_p99_ms or pool.itl_p99_ms or 0.0)


def make_plan(
    model: ModelSpec,
    gpu: GPUSpec,
    workload: Workload | None = None,
    slo: SLO | None = None,
    deployment: Deployment | None = None,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
) -> Plan:
    """Size prefill, decode and aggregated pools for ``workload`` under ``slo`` and judge."""
    w, s, d = workload or Workload(), slo or SLO(), deployment or Deployment()
    per_token = kv_bytes_per_token(model)
    link_eff = 1.0 if d.is_rdma else TCP_LINK_EFFICIENCY
    per_request = per_token * w.prompt_tokens
    transfer = transfer_time_s(per_request, d.link_gbps, link_eff)
    transfer_p99 = transfer_time_s(per_token * w.prompt_p99, d.link_gbps, link_eff)
    inp = Inputs(model, gpu, w, s, d, efficiency, transfer_p99)

    sequence = w.prompt_p99 + w.output_p99
    best: tuple[PoolPlan, PoolPlan] | None = None
    for tp_d in _candidates(d.decode_tp, model, gpu, d, sequence):
        decode = size_decode(inp, tp_d)
        first_step = inp.step_s(decode.batch_per_replica or 1.0, tp_d)
        for tp_p in _candidates(d.prefill_tp, model, gpu, d, w.prompt_p99):
            if tp_d % tp_p:
                continue
            prefill = size_prefill(inp, tp_p, first_step)
            pair = (prefill, decode)
            if best is None or _pair_cost(pair) < _pair_cost(best):
                best = pair
    if best is None:
        raise PlannerError(
            "no prefill tensor-parallel size divides the decode one; pin --prefill-tp/--decode-tp"
        )
    prefill, decode = best
    aggregated = min(
        (size_aggregated(inp, tp) for tp in _candidates(d.aggregated_tp, model, gpu, d, sequence)),
        key=_cost,
    )
    prefill_s = inp.prefill_s(w.prompt_tokens, prefill.tensor_parallel)
    batch = decode.batch_per_replica or 1.0
    evidence = Evidence(
        workload=w, slo=s, deployment=d, prefill=prefill, decode=decode, aggregated=aggregated,
        prefill_s=prefill_s,
        decode_token_gpu_s=inp.step_s(batch, decode.tensor_parallel) / batch
        * decode.tensor_parallel,
        kv_bytes_per_request=per_request, kv_transfer_s=transfer, kv_transfer_p99_s=transfer_p99,
    )  # fmt: skip
    checks = run_checks(evidence)
    outcome, reason = verdict(checks)
    steps = {b: inp.step_s(b, decode.tensor_parallel) for b in STEP_TABLE_BATCHES}
    return Plan(
        model=model, gpu=gpu, workload=w, slo=s, deployment=d, efficiency=efficiency,
        kv_bytes_per_token=per_token, kv_bytes_per_request=per_request, kv_transfer_s=transfer,
        kv_transfer_p99_s=transfer_p99, prefill_s=prefill_s, decode_step_s=steps,
        prefill=prefill, decode=decode, aggregated=aggregated, checks=checks,
        verdict=outcome, verdict_reason=reason,
    )  # fmt: skip


def _pair_cost(pair: tuple[PoolPlan, PoolPlan]) -> tuple[bool, int, float]:
    prefill, decode = pair
    infeasible = not (prefill.feasible and decode.feasible)
    return infeasible, prefill.gpus + decode.gpus, prefill.ttft_p99_ms or 0.0

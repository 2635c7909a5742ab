"""The human-readable plan: a few aligned sections a reviewer can read top to bottom.

Kept apart from the CLI's argument handling so the text is a pure function of the plan (and
easy to test), and apart from :mod:`disagg.planner.plan` so the model has no opinions about
formatting.  Numbers carry units; every pass/fail carries its reason.
"""

from __future__ import annotations

from disagg.planner.plan import Plan
from disagg.planner.sizing import PoolPlan


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size / 10:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _pool_row(label: str, pool: PoolPlan) -> str:
    note = pool.reason if pool.feasible else f"SLO NOT MET: {pool.reason}"
    if pool.role == "aggregated" and pool.prefill_stall_ms is not None:
        note += (
            f"; prefill stalls decode {_ms(pool.prefill_stall_ms)} on "
            f"{(pool.stalled_step_share or 0):.1%} of steps"
        )
    return (
        f"  {label:<12}{pool.replicas:>9}{pool.tensor_parallel:>5}{pool.gpus:>6}"
        f"{_ms(pool.ttft_p99_ms):>12}{_ms(pool.itl_p99_ms):>11}   {note}"
    )


def render_text(plan: Plan, calibration_source: str = "") -> str:
    m, g, w, s, d = plan.model, plan.gpu, plan.workload, plan.slo, plan.deployment
    source = calibration_source or "spec-sheet peaks x default efficiencies (no calibration)"
    tail = f" (p99 {w.prompt_p99})" if w.prompt_p99 != w.prompt_tokens else ""
    out_tail = f" (p99 {w.output_p99})" if w.output_p99 != w.output_tokens else ""
    link = f"{d.link_gbps:g} Gb/s {d.transport}"
    context = w.prompt_tokens + w.output_tokens // 2
    steps = "  ".join(f"b={b}: {_ms(t * 1e3)}" for b, t in plan.decode_step_s.items())
    lines = [
        f"disagg plan: {m.display_name or m.name} on {g.display_name or g.name}",
        f"  timing model: {source}",
        f"  workload: {w.prompt_tokens} prompt tokens{tail}, {w.output_tokens} output "
        f"tokens{out_tail}, {w.arrival_rate:g} req/s, prefix hit {w.prefix_hit_rate:.0%}",
        f"  SLOs: TTFT p99 {s.ttft_p99_ms:g} ms, ITL p99 {s.itl_p99_ms:g} ms",
        "",
        "KV cache",
        f"  per token           {plan.kv_bytes_per_token:,} bytes",
        f"  per request         {plan.kv_bytes_per_request:,} bytes "
        f"({_bytes(plan.kv_bytes_per_request)}, {w.prompt_tokens}-token prompt)",
        f"  transfer            {_ms(plan.kv_transfer_s * 1e3)} at {link}"
        + (f" (p99 prompt {_ms(plan.kv_transfer_p99_s * 1e3)})" if tail else ""),
        "",
        "Roofline",
        f"  prefill             {_ms(plan.prefill_s * 1e3)} for {w.prompt_tokens} tokens "
        f"at tp={plan.prefill.tensor_parallel}",
        f"  decode step         context {context}, tp={plan.decode.tensor_parallel}: {steps}",
        "",
        "Pools           replicas   TP  GPUs    TTFT p99    ITL p99   why",
        _pool_row("prefill", plan.prefill),
        _pool_row("decode", plan.decode),
        f"  {'= P + D':<12}{'':>14}{plan.disaggregated_gpus:>6}",
        _pool_row("aggregated", plan.aggregated),
        "",
        "Checks",
    ]
    lines += [f"  {'PASS' if c.passed else 'FAIL'}  {c.name:<16} {c.reason}" for c in plan.checks]
    lines += ["", f"Verdict: {plan.verdict.upper()} -- {plan.verdict_reason}"]
    return "\n".join(lines)

"""Cross-pool guards: what the two autoscalers may do together.

Each pool's autoscaler only sees its own metric; the DisaggDeployment bounds the
pair.  Given the replicas each pool asks for, ``apply_guards`` returns what the
Deployments get and why anything was cut, for status and Events.  Cuts never go
below one replica per side, and the GPU budget trims the side that is further
above its share first, so the ratio guard and the budget pull the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from disagg.api.disaggdeployment import DisaggDeploymentSpec


@dataclass(frozen=True)
class GuardResult:
    prefill: int
    decode: int
    reasons: list[str] = field(default_factory=list)

    @property
    def clamped(self) -> bool:
        return bool(self.reasons)


def apply_guards(spec: DisaggDeploymentSpec, prefill: int, decode: int) -> GuardResult:
    """Clamp requested replicas to the P:D ratio bounds and the GPU budget."""
    p, d = prefill, decode
    reasons: list[str] = []
    bounds = spec.scaling.prefill_to_decode_ratio
    if bounds is not None and d > 0:
        low, high = bounds.min * d, bounds.max * d
        if p > high:
            new_p = max(1, int(high))
            reasons.append(
                f"prefill {p} -> {new_p}: ratio {p / d:.2f} above max {bounds.max:g} "
                f"with {d} decode"
            )
            p = new_p
        elif p < low:
            # Too little prefill for the decode side: hold decode back instead of adding
            # prefill the prefill autoscaler did not ask for.
            new_d = max(1, int(p / bounds.min)) if bounds.min > 0 else d
            if new_d < d:
                reasons.append(
                    f"decode {d} -> {new_d}: ratio {p / d:.2f} below min {bounds.min:g} "
                    f"with {p} prefill"
                )
                d = new_d
    budget = spec.scaling.gpu_budget
    gp, gd = spec.prefill.gpus_per_replica, spec.decode.gpus_per_replica
    if budget is not None and p * gp + d * gd > budget:
        before = (p, d)
        while p * gp + d * gd > budget and (p > 1 or d > 1):
            # Trim the side holding more GPUs relative to what it asked for.
            if (p * gp >= d * gd and p > 1) or d <= 1:
                p -= 1
            else:
                d -= 1
        reasons.append(
            f"prefill {before[0]} -> {p}, decode {before[1]} -> {d}: "
            f"{before[0] * gp + before[1] * gd} GPUs exceed the budget of {budget}"
        )
    return GuardResult(prefill=p, decode=d, reasons=reasons)

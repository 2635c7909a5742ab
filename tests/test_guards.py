"""Cross-pool guards: P:D ratio bounds and the GPU budget (table-driven)."""

from __future__ import annotations

import pytest

from disagg.api import DisaggDeploymentSpec
from disagg.render.guards import apply_guards


def spec(
    ratio: tuple[float, float] | None = None, budget: int | None = None, tp: int = 1
) -> DisaggDeploymentSpec:
    scaling: dict[str, object] = {}
    if ratio:
        scaling["prefillToDecodeRatio"] = {"min": ratio[0], "max": ratio[1]}
    if budget:
        scaling["gpuBudget"] = budget
    return DisaggDeploymentSpec.model_validate(
        {
            "model": {"name": "m"},
            "prefill": {"parallelism": {"tensor": tp}},
            "decode": {"parallelism": {"tensor": tp}},
            "scaling": scaling,
        }
    )


@pytest.mark.parametrize(
    ("ratio", "budget", "tp", "asked", "expected", "clamped"),
    [
        (None, None, 1, (7, 3), (7, 3), False),
        ((0.5, 2.0), None, 1, (4, 2), (4, 2), False),
        ((0.5, 2.0), None, 1, (6, 2), (4, 2), True),  # too much prefill for 2 decode
        ((0.5, 2.0), None, 1, (1, 4), (1, 2), True),  # too much decode for 1 prefill
        (None, 8, 2, (3, 3), (2, 2), True),  # 12 GPUs asked, 8 allowed
        (None, 8, 1, (4, 4), (4, 4), False),
        (None, 4, 1, (1, 9), (1, 3), True),  # the budget trims the larger side first
        ((1.0, 1.0), 6, 1, (5, 5), (3, 3), True),
    ],
)
def test_guards(
    ratio: tuple[float, float] | None,
    budget: int | None,
    tp: int,
    asked: tuple[int, int],
    expected: tuple[int, int],
    clamped: bool,
) -> None:
    result = apply_guards(spec(ratio, budget, tp), *asked)
    assert (result.prefill, result.decode) == expected
    assert result.clamped is clamped
    if clamped:
        assert result.reasons and all(r for r in result.reasons)


def test_guards_never_go_below_one_replica_per_side() -> None:
    result = apply_guards(spec(budget=1), 3, 3)
    assert result.prefill >= 1 and result.decode >= 1

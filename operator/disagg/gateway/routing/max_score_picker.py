"""Max-score picker: the endpoint with the highest weighted total.

Ties (within ``1e-9``) are broken at random with the picker's own seeded generator, so equal
endpoints share load instead of the first one taking everything.  Parameters: ``seed``
(optional, for reproducible tests).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, NoEndpointError


class MaxScorePicker:
    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, totals: Sequence[tuple[Endpoint, float]]) -> Endpoint:
        if not totals:
            raise NoEndpointError("nothing to pick from")
        floor = max([score for _, score in totals]) - 1e-9
        tied = [e for e, score in totals if score >= floor]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)

"""Random picker: uniform over the candidates, ignoring scores (a baseline).

Parameters: ``seed`` (optional, for reproducible tests).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, NoEndpointError


class RandomPicker:
    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, totals: Sequence[tuple[Endpoint, float]]) -> Endpoint:
        if not totals:
            raise NoEndpointError("nothing to pick from")
        return self._rng.choice([e for e, _ in totals])

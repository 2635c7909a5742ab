"""Round-robin scorer: the baseline policy.

Gives 1.0 to the endpoint whose turn it is and 0.0 to the rest; the turn advances on every call.
Endpoints are ordered by url so the rotation is stable while the set is.  Reads nothing else.
Parameters: none.  Used alone (weight 1, max-score picker) it is plain round-robin.
"""

from __future__ import annotations

from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest


class RoundRobinScorer:
    def __init__(self) -> None:
        self._turn = 0

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        ordered = sorted(e.url for e in endpoints)
        if not ordered:
            return {}
        chosen = ordered[self._turn % len(ordered)]
        self._turn += 1
        return {url: 1.0 if url == chosen else 0.0 for url in ordered}

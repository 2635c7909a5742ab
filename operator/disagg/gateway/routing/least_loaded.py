"""Least-loaded scorer: prefer the endpoint with the least work queued or in flight.

Load = the gateway's in-flight requests to the endpoint + the worker's scraped
``vllm:num_requests_waiting`` (requests it has accepted but not scheduled).  Scores are min-max
normalised over the candidates: the least loaded gets 1.0, the most loaded 0.0, all equal -> 1.0.
Parameters: ``waiting_weight`` (default 1.0) -- how many in-flight requests one waiting request
counts as.
"""

from __future__ import annotations

from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest


class LeastLoadedScorer:
    def __init__(self, waiting_weight: float = 1.0) -> None:
        if waiting_weight < 0:
            raise ValueError("waiting_weight must be >= 0")
        self.waiting_weight = waiting_weight

    def load(self, endpoint: Endpoint) -> float:
        return endpoint.inflight + self.waiting_weight * max(0.0, endpoint.waiting)

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        weight = self.waiting_weight  # ``load`` inlined: it runs per endpoint per request
        loads = {e.url: e.inflight + weight * max(0.0, e.waiting) for e in endpoints}
        if not loads:
            return {}
        low, high = min(loads.values()), max(loads.values())
        if high == low:
            return dict.fromkeys(loads, 1.0)
        return {url: (high - load) / (high - low) for url, load in loads.items()}

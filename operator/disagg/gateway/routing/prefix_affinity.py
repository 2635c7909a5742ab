"""Prefix-affinity scorer: prefer the endpoint that likely holds the prompt's leading blocks.

Reads the pool's ``PrefixIndex`` (shared with the profile handler, which records every routing
decision into it) and scores each endpoint by the fraction of the prompt's full blocks it is
believed to hold as a prefix: 1.0 = the whole prompt is cached there, 0.0 = nothing (or the prompt
is shorter than one block).  Parameters: none (the index's size is set on the pool).
"""

from __future__ import annotations

from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest
from disagg.gateway.routing.prefix_index import PrefixIndex


class PrefixAffinityScorer:
    def __init__(self, index: PrefixIndex) -> None:
        self.index = index

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        total = len(request.block_hashes)
        if total == 0:
            return {e.url: 0.0 for e in endpoints}
        return {
            e.url: self.index.matched_blocks(e.url, request.block_hashes) / total for e in endpoints
        }

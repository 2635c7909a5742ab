"""Precise prefix scorer: prefer the worker whose prefix cache really holds most of the prompt.

Reads the pool's ``KVBlockIndex`` (what the engines' own KV events say they cache) and scores each
endpoint by the fraction of the prompt's full blocks -- hashed from the model's real token ids,
the way vLLM hashes them (``RoutingRequest.engine_block_hashes``) -- that form the longest cached
prefix on that worker: 1.0 = the whole prompt is cached there, 0.0 = nothing.

Fallback, per endpoint: when the request has no engine hashes (no tokenizer for a text prompt) or
the worker's event stream is not synced (events off, not connected yet, a gap it could not fill),
the score comes from the approximate ``PrefixIndex`` instead, exactly as ``prefix-affinity`` would
compute it.  Both are fractions of the prompt, so a pool mixing the two still compares fairly.
Parameters: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.gateway.routing.prefix_index import PrefixIndex


class PrecisePrefixScorer:
    def __init__(self, index: PrefixIndex, kv_index: KVBlockIndex) -> None:
        self.index = index
        self.kv_index = kv_index

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        precise = request.engine_block_hashes
        approximate = request.block_hashes
        scores: dict[str, float] = {}
        for endpoint in endpoints:
            url = endpoint.url
            if precise and self.kv_index.synced(url):
                scores[url] = self.kv_index.matched_blocks(url, precise) / len(precise)
            elif approximate:
                scores[url] = self.index.matched_blocks(url, approximate) / len(approximate)
            else:
                scores[url] = 0.0
        return scores

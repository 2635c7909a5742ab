"""KV-cache-usage scorer: prefer the endpoint with the most free KV cache.

Reads the scraped ``vllm:kv_cache_usage_perc`` (0..1) and scores ``1 - usage``, clamped to [0, 1].
Matters most for decode, where a full cache means preemptions.  Parameters: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest


class KVCacheUsageScorer:
    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        return {e.url: 1.0 - min(1.0, max(0.0, e.kv_cache_usage)) for e in endpoints}

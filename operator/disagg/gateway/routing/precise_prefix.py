"""Precise prefix scorer: prefer the worker that will give the prompt its first token soonest,
judged by what its prefix cache really holds and the work queued ahead of the prompt there.

Reads the pool's ``KVBlockIndex`` (what the engines' own KV events say they cache) and finds,
per endpoint, the fraction of the prompt's full blocks -- hashed from the model's real token ids,
the way vLLM hashes them (``RoutingRequest.engine_block_hashes``) -- that form the longest cached
prefix on that worker: 1.0 = the whole prompt is cached there, 0.0 = nothing.

Fallback, per endpoint: when the request has no engine hashes (no tokenizer for a text prompt) or
the worker's event stream is not synced (events off, not connected yet, a gap it could not fill),
the fraction comes from the approximate ``PrefixIndex`` instead, exactly as ``prefix-affinity``
would compute it.  Both are fractions of the prompt, so a pool mixing the two still compares fairly.

Why the scorer also weighs load.  Knowing exactly where a prefix lives makes "always go there" an
accurate policy -- and a bad one for the tail: a popular prefix then lands every request on one
worker, whose queue delays the first token by more than the prefill a cache hit saves.  Summing
a cache score with a separate, min-max normalised load scorer does not trade the two well either:
there one request of difference in flight counts as much as a whole cached prompt, so affinity
breaks on noise and every extra copy of a prefix evicts someone else's.  So this scorer puts both
in one unit, *prompts of prefill ahead of this request's first token* on each worker:

    cost = (1 - cached fraction)                      the part of this prompt left to compute
         + waiting_cost * (engine's waiting queue)     requests the engine could not schedule yet
         + inflight_cost * (in flight - fewest in flight among the candidates)

and scores ``1 - cost / max(1, highest cost)``.  With no queue anywhere that is exactly the cached
fraction (the score it always gave), so load only matters once it costs more than the cache saves.
The waiting queue is the engines' own ``vllm:num_requests_waiting``, scraped the same by every
gateway replica, so replicas that agree on the cache (the events) also agree on when a worker is
saturated; a waiting request costs about one prompt (it will be prefilled before ours).  The
in-flight count is this replica's own (another replica's requests are invisible to it), and a
stream that is decoding delays a new prompt only by its share of each step, hence the small
default.  Parameters: ``waiting_cost`` (default 1.0) and ``inflight_cost`` (default 0.1), both
>= 0; both 0 gives the pure cache score.
"""

from __future__ import annotations

from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.gateway.routing.prefix_index import PrefixIndex


class PrecisePrefixScorer:
    def __init__(
        self,
        index: PrefixIndex,
        kv_index: KVBlockIndex,
        waiting_cost: float = 1.0,
        inflight_cost: float = 0.1,
    ) -> None:
        if waiting_cost < 0 or inflight_cost < 0:
            raise ValueError("waiting_cost and inflight_cost must be >= 0")
        self.index = index
        self.kv_index = kv_index
        self.waiting_cost = waiting_cost
        self.inflight_cost = inflight_cost

    def cached_fraction(self, request: RoutingRequest, endpoint: Endpoint) -> float:
        """The longest cached prefix on ``endpoint``, as a fraction of the prompt's blocks."""
        precise = request.engine_block_hashes
        if precise and self.kv_index.synced(endpoint.url):
            return self.kv_index.matched_blocks(endpoint.url, precise) / len(precise)
        approximate = request.block_hashes
        if approximate:
            return self.index.matched_blocks(endpoint.url, approximate) / len(approximate)
        return 0.0

    def cost(self, fraction: float, endpoint: Endpoint, fewest_inflight: int) -> float:
        """Prompts of prefill ahead of this request's first token on ``endpoint``."""
        queued = self.waiting_cost * max(0.0, endpoint.waiting)
        busier = self.inflight_cost * (endpoint.inflight - fewest_inflight)
        return (1.0 - fraction) + queued + busier

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        if not endpoints:
            return {}
        fewest = min(e.inflight for e in endpoints)
        costs = {e.url: self.cost(self.cached_fraction(request, e), e, fewest) for e in endpoints}
        worst = max(1.0, *costs.values())
        return {url: max(0.0, 1.0 - cost / worst) for url, cost in costs.items()}

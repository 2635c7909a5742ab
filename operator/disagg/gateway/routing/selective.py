"""Selective-disaggregation decider: skip the prefill pool when there is little to prefill.

A remote prefill costs a second HTTP round trip and a KV transfer; for a short prompt, or one whose
prefix the chosen decode worker already caches, the decode worker prefills faster itself.  The
decider takes the prompt's length minus the tokens the decode worker is believed to cache (from the
decode pool's prefix index) and disaggregates only when that *uncached* part is at least
``min_uncached_prompt_tokens``.  Parameters: ``min_uncached_prompt_tokens`` (>= 0; 0 means always
disaggregate).
"""

from __future__ import annotations

from dataclasses import dataclass

from disagg.gateway.routing.contracts import RoutingRequest
from disagg.gateway.routing.frozen import fast_init


@fast_init
@dataclass(frozen=True)
class Decision:
    disaggregate: bool
    uncached_tokens: int
    cached_tokens: int


class PrefixDecider:
    def __init__(self, min_uncached_prompt_tokens: int) -> None:
        if min_uncached_prompt_tokens < 0:
            raise ValueError("min_uncached_prompt_tokens must be >= 0")
        self.min_uncached_prompt_tokens = min_uncached_prompt_tokens

    def decide(self, request: RoutingRequest, cached_blocks: int) -> Decision:
        cached = min(request.prompt_tokens, cached_blocks * request.block_size)
        uncached = request.prompt_tokens - cached
        return Decision(
            disaggregate=uncached >= self.min_uncached_prompt_tokens,
            uncached_tokens=uncached,
            cached_tokens=cached,
        )

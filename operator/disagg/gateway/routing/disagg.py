"""The P/D profile handler: decide disaggregated vs decode-only, then pick the workers.

Like llm-d's disaggregation handler it picks the decode worker first (its profile may prefer the
worker caching the prompt), asks the decider whether the prompt's *uncached* part on that worker
is worth a remote prefill, and only then runs the prefill profile -- over the prefill workers
whose KV the chosen decode worker can load (``compat``): none left means decode-only.  Both
pools' prefix indexes are owned here and updated on every decision, including fallbacks reported
by the caller, so the indexes reflect where blocks really went (a decode worker caches the blocks
it pulled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from disagg.gateway.routing.compat import kv_compatible
from disagg.gateway.routing.contracts import Endpoint, NoEndpointError, Profile, RoutingRequest
from disagg.gateway.routing.frozen import fast_init
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.gateway.routing.selective import PrefixDecider

DecisionKind = Literal["disaggregated", "decode_only"]


@fast_init
@dataclass(frozen=True)
class Plan:
    decision: DecisionKind
    decode: Endpoint
    uncached_tokens: int
    reason: str
    """Why: ``uncached_above_threshold``, ``uncached_below_threshold``, ``no_prefill_endpoint``,
    ``no_compatible_prefill`` (prefill workers exist, none with the decode worker's KV layout)."""


class DisaggRouter:
    """Owns the prefill and decode profiles, their prefix indexes and the decider."""

    def __init__(
        self,
        prefill: Profile,
        decode: Profile,
        prefill_index: PrefixIndex,
        decode_index: PrefixIndex,
        decider: PrefixDecider,
        kv_index: KVBlockIndex | None = None,
    ) -> None:
        self.prefill = prefill
        self.decode = decode
        self.prefill_index = prefill_index
        self.decode_index = decode_index
        self.decider = decider
        self.kv_index = kv_index
        """The engines' KV events, when the gateway follows them: then what a decode worker
        caches is known, not guessed, whenever its stream is synced."""

    def plan(
        self,
        request: RoutingRequest,
        prefill_endpoints: Sequence[Endpoint],
        decode_endpoints: Sequence[Endpoint],
    ) -> Plan:
        """Choose decode first, then whether a prefill leg is worth it."""
        decode = self.decode.run(request, decode_endpoints).picked
        kv = self.kv_index
        if kv is not None and request.engine_block_hashes and kv.synced(decode.url):
            cached = kv.matched_blocks(decode.url, request.engine_block_hashes)
            exact = replace(request, prompt_tokens=request.engine_prompt_tokens)
            decision = self.decider.decide(exact, cached)
        else:
            cached = self.decode_index.matched_blocks(decode.url, request.block_hashes)
            decision = self.decider.decide(request, cached)
        if not decision.disaggregate:
            reason = "uncached_below_threshold"
            kind: DecisionKind = "decode_only"
        elif not prefill_endpoints:
            reason, kind = "no_prefill_endpoint", "decode_only"
        elif not any(kv_compatible(p, decode) for p in prefill_endpoints):
            reason, kind = "no_compatible_prefill", "decode_only"
        else:
            reason, kind = "uncached_above_threshold", "disaggregated"
        return Plan(kind, decode, decision.uncached_tokens, reason)

    def pick_prefill(
        self,
        request: RoutingRequest,
        endpoints: Sequence[Endpoint],
        decode: Endpoint,
        exclude: frozenset[str] = frozenset(),
    ) -> Endpoint | None:
        """A prefill worker not yet tried whose KV ``decode`` can load, or None."""
        compatible = [e for e in endpoints if kv_compatible(e, decode)]
        try:
            return self.prefill.run(request, compatible, exclude).picked
        except NoEndpointError:
            return None

    def pick_decode(
        self,
        request: RoutingRequest,
        endpoints: Sequence[Endpoint],
        exclude: frozenset[str] = frozenset(),
    ) -> Endpoint | None:
        """A decode worker not yet tried (for retries), or None when none is left."""
        try:
            return self.decode.run(request, endpoints, exclude).picked
        except NoEndpointError:
            return None

    def record(self, role: Literal["prefill", "decode"], request: RoutingRequest, url: str) -> None:
        """Record that ``url`` served (and now caches) the request's blocks."""
        index = self.prefill_index if role == "prefill" else self.decode_index
        index.record(url, request.block_hashes)

    def retain(self, prefill_urls: Sequence[str], decode_urls: Sequence[str]) -> None:
        """Forget workers that went away."""
        self.prefill_index.retain(prefill_urls)
        self.decode_index.retain(decode_urls)

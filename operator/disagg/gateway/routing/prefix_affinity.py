"""Prefix-affinity scorer: prefer the endpoint that likely holds the prompt's leading blocks.

Reads the pool's ``PrefixIndex`` (shared with the profile handler, which records every routing
decision into it) and scores each endpoint by the fraction of the prompt's full blocks it is
believed to hold as a prefix: 1.0 = the whole prompt is cached there, 0.0 = nothing (or the prompt
is shorter than one block).

Several gateway replicas each keep their own index, so a prompt prefix one replica placed is
unknown to the others.  They agree without sharing state through a *rendezvous hint*: when no
candidate holds any of the prompt's blocks, the candidate that rendezvous (highest-random-weight)
hashing of the prompt's first block selects scores ``hint`` -- the same choice on every replica,
which each replica's index then records.  The hint is small (default 0.25), so it breaks ties
between equally loaded workers and never outweighs a real cached prefix or a load difference.
Parameters: ``hint`` (0..1; 0 disables it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest
from disagg.gateway.routing.prefix_index import PrefixIndex

_WEIGHT_HASH = hashlib.blake2b(digest_size=8)
"""The empty hash each weight's is copied from (cheaper than a new one's keyword arguments)."""


def rendezvous_winner(key: int, endpoints: Sequence[Endpoint]) -> str:
    """The endpoint url with the highest hash of (key, url): stable as endpoints come and go.
    (On every request with an unseen prefix, so a plain loop: the first of equal weights wins,
    as with ``max``.)"""
    if len(endpoints) == 1:  # the one candidate wins whatever its weight (a pool of one)
        return endpoints[0].url
    prefix = key.to_bytes(8, "big")
    winner: str | None = None
    best = b""
    for endpoint in endpoints:
        url = endpoint.url
        hasher = _WEIGHT_HASH.copy()
        hasher.update(prefix + url.encode())
        weight = hasher.digest()
        if winner is None or weight > best:
            winner, best = url, weight
    if winner is None:
        raise ValueError("rendezvous_winner() of no endpoints")
    return winner


class PrefixAffinityScorer:
    def __init__(self, index: PrefixIndex, hint: float = 0.25) -> None:
        if not 0.0 <= hint <= 1.0:
            raise ValueError("hint must be in [0, 1]")
        self.index = index
        self.hint = hint

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        hashes = request.block_hashes
        total = len(hashes)
        if total == 0:
            return {e.url: 0.0 for e in endpoints}
        matched = self.index.matched_blocks
        scores = {e.url: matched(e.url, hashes) / total for e in endpoints}
        if self.hint and endpoints and not any(scores.values()):
            scores[rendezvous_winner(hashes[0], endpoints)] = self.hint
        return scores

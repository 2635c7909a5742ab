"""The routing contracts, in one place: what a plugin sees, what it returns, how weights apply.

Mirrors the llm-d router: a *profile* runs its filters (drop endpoints), then every scorer (each
returns a score in [0, 1] per endpoint), sums the scores times the profile's weights, and hands the
result to a picker.  Scorers never weight themselves, so the same plugin can count twice as much
in one pool as in another purely by configuration.  Plugins receive immutable snapshots
(``Endpoint``, ``RoutingRequest``) so a policy can be tested with a table and no server.

A plugin that keeps state (round-robin's turn) owns it per instance; nothing is global.  Where
a request went is recorded by the P/D handler (``DisaggRouter`` in ``disagg.py`` writes the prefix
index, which prefix affinity reads), not by the plugins, so a plugin only ever scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from disagg.gateway.routing.frozen import fast_init


@fast_init
@dataclass(frozen=True)
class Endpoint:
    """One worker as the router sees it at decision time."""

    url: str
    inflight: int = 0
    """Requests the gateway has in flight to this worker now."""
    waiting: float = 0.0
    """Last scraped ``vllm:num_requests_waiting`` (summed over engines)."""
    running: float = 0.0
    """Last scraped ``vllm:num_requests_running`` (summed over engines)."""
    kv_cache_usage: float = 0.0
    """Last scraped ``vllm:kv_cache_usage_perc`` (0..1, max over engines)."""
    healthy: bool = True
    """False after a failed scrape or health check or a connection error, until a good one."""
    kv_layout: str | None = None
    """Hash of what decides KV compatibility (model, revision, image, dtypes, block size,
    pipeline parallelism...; the pod label ``disagg.dev/kv-layout``); None when unknown."""
    tensor_parallel: int | None = None
    """Tensor-parallel size (pod label ``disagg.dev/tensor-parallel``); None when unknown."""


@fast_init
@dataclass(frozen=True)
class RoutingRequest:
    """What the router knows about a request: its id and the prompt's chained block hashes."""

    request_id: str
    prompt_tokens: int
    """Approximate prompt length in tokens (see ``prompt``)."""
    block_hashes: tuple[int, ...] = ()
    """Chained hashes of the prompt's full blocks, first block first."""
    block_size: int = 16
    engine_block_hashes: tuple[int, ...] = ()
    """The prompt's full blocks as the engines name them: vLLM's hashes (64-bit event keys) of
    the model tokenizer's ids; empty when the gateway cannot tokenize the prompt exactly."""
    engine_prompt_tokens: int = 0
    """Exact prompt length in the model's tokens (0 when unknown)."""


class RoutingError(Exception):
    """A routing decision could not be made (no endpoint left, a plugin broke its contract)."""


class NoEndpointError(RoutingError):
    """Every endpoint was filtered out or excluded."""


Scores = Mapping[str, float]
"""Endpoint url -> score in [0, 1]."""


@runtime_checkable
class Filter(Protocol):
    """Drops endpoints that must not serve the request."""

    def filter(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores every endpoint in [0, 1]; higher is better.  Must return a score per endpoint."""

    def score(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]: ...


@runtime_checkable
class Picker(Protocol):
    """Chooses one endpoint from the weighted totals (never empty)."""

    def pick(self, totals: Sequence[tuple[Endpoint, float]]) -> Endpoint: ...


@dataclass(frozen=True)
class WeightedScorer:
    weight: float
    scorer: Scorer
    name: str


@fast_init
@dataclass(frozen=True)
class ProfileResult:
    picked: Endpoint
    totals: dict[str, float]
    """Weighted total per candidate url (for logs and tests)."""


@dataclass
class Profile:
    """Filters -> weighted scorers -> picker, for one pool."""

    name: str
    picker: Picker
    filters: list[Filter] = field(default_factory=list)
    scorers: list[WeightedScorer] = field(default_factory=list)

    def run(
        self,
        request: RoutingRequest,
        endpoints: Sequence[Endpoint],
        exclude: frozenset[str] = frozenset(),
    ) -> ProfileResult:
        """Pick an endpoint; ``exclude`` holds urls already tried for this request."""
        candidates = [e for e in endpoints if e.url not in exclude] if exclude else list(endpoints)
        for flt in self.filters:
            if not candidates:
                break
            candidates = flt.filter(request, candidates)
        if not candidates:
            raise NoEndpointError(f"{self.name}: no endpoint left after filters and exclusions")
        totals = dict.fromkeys([e.url for e in candidates], 0.0)
        for ws in self.scorers:
            scores = ws.scorer.score(request, candidates)
            weight = ws.weight
            for url, total in totals.items():  # values change, keys do not
                value = scores.get(url)
                if value is None or not 0.0 <= value <= 1.0:
                    raise RoutingError(f"scorer {ws.name} returned {value!r} for {url} (need 0..1)")
                totals[url] = total + weight * value
        picked = self.picker.pick([(e, totals[e.url]) for e in candidates])
        return ProfileResult(picked=picked, totals=totals)

"""The precise-prefix scorer's trade between a cached prefix and the load ahead of the prompt.

Table-driven on the pure scorer (and one profile, to check what a user notices: which worker is
picked); the index itself is tested in ``test_kv_index.py``.
"""

from __future__ import annotations

import pytest

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.gateway.routing.precise_prefix import PrecisePrefixScorer
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.gateway.routing.registry import PluginSpec, build_profile

A, B, C = "http://a", "http://b", "http://c"
PROMPT = (11, 12, 13, 14)


def _kv(**held: int) -> KVBlockIndex:
    """An index where worker ``a``/``b``/``c`` holds the first n blocks of ``PROMPT``."""
    index = KVBlockIndex()
    for name, blocks in held.items():
        url = f"http://{name}"
        index.stored(url, list(PROMPT[:blocks]))
        index.set_synced(url, True)
    for url in (A, B, C):
        index.set_synced(url, True)
    return index


def _request() -> RoutingRequest:
    return RoutingRequest("r", 64, (1, 2, 3, 4), 16, PROMPT, 64)


def test_without_load_the_score_is_the_cached_fraction() -> None:
    scorer = PrecisePrefixScorer(PrefixIndex(), _kv(a=4, b=2))
    scores = scorer.score(_request(), [Endpoint(A), Endpoint(B), Endpoint(C)])
    assert scores == {A: 1.0, B: 0.5, C: 0.0}


def _picked(kv: KVBlockIndex, endpoints: list[Endpoint], **params: float) -> str:
    profile = build_profile(
        "decode", [PluginSpec("precise-prefix", 1.0, params)], PrefixIndex(), kv_index=kv
    )
    return profile.run(_request(), endpoints).picked.url


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # A caches the whole prompt; B nothing.
        (Endpoint(A), Endpoint(B), A),
        # a few more streams in flight on A cost less than B's full prefill
        (Endpoint(A, inflight=5), Endpoint(B, inflight=0), A),
        # A's engine has two requests it could not schedule: each will be prefilled before
        # this one, which costs more than the idle worker's full prefill
        (Endpoint(A, waiting=2), Endpoint(B), B),
        # many more streams in flight on A than on B add up to more than one prefill
        (Endpoint(A, inflight=15), Endpoint(B, inflight=2), B),
        # both saturated alike: the cache decides again
        (Endpoint(A, waiting=2), Endpoint(B, waiting=2), A),
    ],
)
def test_the_cached_worker_wins_until_its_queue_costs_more_than_the_cache_saves(
    a: Endpoint, b: Endpoint, expected: str
) -> None:
    assert _picked(_kv(a=4), [a, b]) == expected


def test_zero_costs_give_the_pure_cache_score() -> None:
    kv = _kv(a=4)
    busy = [Endpoint(A, inflight=50, waiting=9), Endpoint(B)]
    assert _picked(kv, busy, waiting_cost=0.0, inflight_cost=0.0) == A
    assert _picked(kv, busy) == B


def test_scores_stay_in_range_and_a_partial_hit_beats_a_miss_at_equal_load() -> None:
    scorer = PrecisePrefixScorer(PrefixIndex(), _kv(a=1, b=3))
    endpoints = [Endpoint(A, waiting=3), Endpoint(B, waiting=3), Endpoint(C, waiting=3)]
    scores = scorer.score(_request(), endpoints)
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert scores[B] > scores[A] > scores[C]


def test_negative_costs_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="waiting_cost"):
        _picked(_kv(a=4), [Endpoint(A)], waiting_cost=-1.0)

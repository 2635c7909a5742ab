"""Table-driven tests of each routing plugin and of the profile runner's contract."""

from __future__ import annotations

import pytest

from disagg.gateway.routing.contracts import (
    Endpoint,
    NoEndpointError,
    Profile,
    RoutingError,
    RoutingRequest,
    WeightedScorer,
)
from disagg.gateway.routing.healthy_filter import HealthyFilter
from disagg.gateway.routing.kv_cache_usage import KVCacheUsageScorer
from disagg.gateway.routing.least_loaded import LeastLoadedScorer
from disagg.gateway.routing.max_score_picker import MaxScorePicker
from disagg.gateway.routing.prefix_affinity import PrefixAffinityScorer
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.gateway.routing.random_picker import RandomPicker
from disagg.gateway.routing.registry import PluginSpec, build_profile
from disagg.gateway.routing.round_robin import RoundRobinScorer

REQ = RoutingRequest("r1", prompt_tokens=64, block_hashes=(1, 2, 3, 4), block_size=16)


def ep(url: str, **kw: float | int | bool) -> Endpoint:
    return Endpoint(url, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("a"), ep("b")], {"a": 1.0, "b": 1.0}),
        ([ep("a", inflight=0), ep("b", inflight=4)], {"a": 1.0, "b": 0.0}),
        ([ep("a", inflight=2), ep("b", inflight=1, waiting=3), ep("c", inflight=3)],
         {"a": 1.0, "b": 0.0, "c": 0.5}),
        ([ep("a", waiting=10), ep("b", inflight=5), ep("c")], {"a": 0.0, "b": 0.5, "c": 1.0}),
        ([ep("a", waiting=-3), ep("b", inflight=1)], {"a": 1.0, "b": 0.0}),
    ],
)  # fmt: skip
def test_least_loaded(endpoints: list[Endpoint], expected: dict[str, float]) -> None:
    assert LeastLoadedScorer().score(REQ, endpoints) == pytest.approx(expected)


def test_least_loaded_waiting_weight() -> None:
    scores = LeastLoadedScorer(waiting_weight=0.0).score(REQ, [ep("a", waiting=9), ep("b")])
    assert scores == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError):
        LeastLoadedScorer(waiting_weight=-1)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0), (1.7, 0.0), (-0.2, 1.0)],
)
def test_kv_cache_usage(usage: float, expected: float) -> None:
    assert KVCacheUsageScorer().score(REQ, [ep("a", kv_cache_usage=usage)]) == {
        "a": pytest.approx(expected)
    }


def test_round_robin_rotates_in_url_order_and_survives_set_changes() -> None:
    rr = RoundRobinScorer()
    eps = [ep("b"), ep("a"), ep("c")]
    winners = []
    for _ in range(6):
        scores = rr.score(REQ, eps)
        assert sorted(scores.values()) == [0.0, 0.0, 1.0]
        winners.append(max(scores, key=lambda u: scores[u]))
    assert winners == ["a", "b", "c", "a", "b", "c"]
    assert rr.score(REQ, []) == {}
    assert set(rr.score(REQ, [ep("x")]).values()) == {1.0}


@pytest.mark.parametrize(
    ("recorded", "hashes", "expected"),
    [
        ({}, (1, 2, 3, 4), {"a": 0.0, "b": 0.0}),
        ({"a": (1, 2, 3, 4)}, (1, 2, 3, 4), {"a": 1.0, "b": 0.0}),
        ({"a": (1, 2), "b": (1, 2, 3)}, (1, 2, 3, 4), {"a": 0.5, "b": 0.75}),
        ({"a": (2, 3, 4)}, (1, 2, 3, 4), {"a": 0.0, "b": 0.0}),  # no first block, no prefix
        ({"a": (1, 2)}, (), {"a": 0.0, "b": 0.0}),  # prompt shorter than a block
    ],
)
def test_prefix_affinity(
    recorded: dict[str, tuple[int, ...]], hashes: tuple[int, ...], expected: dict[str, float]
) -> None:
    index = PrefixIndex()
    for url, blocks in recorded.items():
        index.record(url, blocks)
    request = RoutingRequest("r", len(hashes) * 16, hashes)
    assert PrefixAffinityScorer(index, hint=0).score(request, [ep("a"), ep("b")]) == expected


def test_the_rendezvous_hint_agrees_across_replicas_and_yields_to_a_cached_prefix() -> None:
    """Two gateway replicas (two indexes) send an unseen prompt to the same worker; the hint
    applies only while no candidate holds a block, and removing another worker keeps it."""
    workers = [ep(u) for u in ("a", "b", "c", "d")]
    request = RoutingRequest("r", 64, (7, 8, 9, 10))
    one = PrefixAffinityScorer(PrefixIndex()).score(request, workers)
    two = PrefixAffinityScorer(PrefixIndex()).score(request, workers)
    assert one == two and sorted(one.values()) == [0.0, 0.0, 0.0, 0.25]
    winner = max(one, key=lambda url: one[url])
    others = [w for w in workers if w.url != winner]
    fewer = PrefixAffinityScorer(PrefixIndex()).score(request, [*others[1:], ep(winner)])
    assert max(fewer, key=lambda url: fewer[url]) == winner
    index = PrefixIndex()
    index.record(others[0].url, (7,))
    assert PrefixAffinityScorer(index).score(request, workers)[winner] == 0.0
    spread = {
        max(s, key=lambda url: s[url])
        for s in (
            PrefixAffinityScorer(PrefixIndex()).score(RoutingRequest("r", 16, (h,)), workers)
            for h in range(40)
        )
    }
    assert len(spread) == 4  # different prompts spread over the workers


def test_prefix_index_is_lru_bounded_per_worker() -> None:
    index = PrefixIndex(capacity_blocks=3)
    index.record("a", (1, 2, 3))
    index.record("a", (1,))  # refresh block 1
    index.record("a", (9,))  # evicts the least recently used: 2
    assert index.matched_blocks("a", (1, 2, 3)) == 1
    assert index.matched_blocks("a", (9,)) == 1
    index.retain(["b"])
    assert index.matched_blocks("a", (1,)) == 0
    with pytest.raises(ValueError):
        PrefixIndex(0)


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("a"), ep("b", healthy=False)], ["a"]),
        ([ep("a", healthy=False), ep("b", healthy=False)], ["a", "b"]),  # all stale: try anyway
        ([], []),
    ],
)
def test_healthy_filter(endpoints: list[Endpoint], expected: list[str]) -> None:
    assert [e.url for e in HealthyFilter().filter(REQ, endpoints)] == expected


@pytest.mark.parametrize(
    ("totals", "expected"),
    [
        ([("a", 0.2), ("b", 0.9), ("c", 0.5)], {"b"}),
        ([("a", 1.0), ("b", 1.0), ("c", 0.0)], {"a", "b"}),
        ([("a", 0.0)], {"a"}),
    ],
)
def test_max_score_picker(totals: list[tuple[str, float]], expected: set[str]) -> None:
    picker = MaxScorePicker(seed=7)
    picked = {picker.pick([(ep(u), s) for u, s in totals]).url for _ in range(50)}
    assert picked == expected  # ties are shared, never the first one only


def test_pickers_refuse_empty() -> None:
    for picker in (MaxScorePicker(), RandomPicker()):
        with pytest.raises(NoEndpointError):
            picker.pick([])


def test_random_picker_ignores_scores() -> None:
    picker = RandomPicker(seed=1)
    seen = {picker.pick([(ep("a"), 0.0), (ep("b"), 9.0)]).url for _ in range(50)}
    assert seen == {"a", "b"}


class _Fixed:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score(self, request: RoutingRequest, endpoints: list[Endpoint]) -> dict[str, float]:
        return {e.url: self.scores[e.url] for e in endpoints}


@pytest.mark.parametrize(
    ("weights", "expected"),
    [((1.0, 1.0), "a"), ((1.0, 3.0), "b"), ((5.0, 1.0), "a")],
)
def test_profile_applies_weights(weights: tuple[float, float], expected: str) -> None:
    profile = Profile(
        "p",
        MaxScorePicker(),
        scorers=[
            WeightedScorer(weights[0], _Fixed({"a": 1.0, "b": 0.0}), "x"),
            WeightedScorer(weights[1], _Fixed({"a": 0.4, "b": 1.0}), "y"),
        ],
    )
    result = profile.run(REQ, [ep("a"), ep("b")])
    assert result.picked.url == expected
    assert result.totals["a"] == pytest.approx(weights[0] + 0.4 * weights[1])


def test_profile_exclusions_filters_and_contract() -> None:
    profile = Profile("p", MaxScorePicker(), filters=[HealthyFilter()])
    assert profile.run(REQ, [ep("a"), ep("b")], frozenset({"a"})).picked.url == "b"
    with pytest.raises(NoEndpointError):
        profile.run(REQ, [ep("a")], frozenset({"a"}))
    bad = Profile("p", MaxScorePicker(), scorers=[WeightedScorer(1, _Fixed({"a": 1.5}), "bad")])
    with pytest.raises(RoutingError, match="bad"):
        bad.run(REQ, [ep("a")])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (PluginSpec("no-such-scorer"), "unknown scorer type 'no-such-scorer'"),
        (PluginSpec("least-loaded", params={"bogus": 1}), "bad parameters for scorer"),
        (PluginSpec("least-loaded", weight=0), "weight must be > 0"),
    ],
)
def test_registry_rejects_bad_specs(spec: PluginSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_profile("p", [spec], PrefixIndex())


def test_registry_builds_every_registered_plugin() -> None:
    index = PrefixIndex()
    index.record("b", REQ.block_hashes)
    profile = build_profile(
        "p",
        [PluginSpec(t) for t in ("round-robin", "least-loaded", "kv-cache-usage")]
        + [PluginSpec("prefix-affinity", weight=10)],
        index,
        picker=PluginSpec("max-score", params={"seed": 3}),
    )
    assert profile.run(REQ, [ep("a"), ep("b")]).picked.url == "b"
    build_profile("q", [], index, picker=PluginSpec("random"))

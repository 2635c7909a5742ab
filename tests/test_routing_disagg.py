"""The P/D profile handler, the selective-disaggregation decider and prompt hashing."""

from __future__ import annotations

import random

import pytest

from disagg.gateway.routing.compat import kv_compatible
from disagg.gateway.routing.contracts import Endpoint, RoutingRequest
from disagg.gateway.routing.disagg import DisaggRouter
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.gateway.routing.prompt import (
    approximate_tokens,
    block_hashes,
    prompt_blocks,
    prompt_tokens,
)
from disagg.gateway.routing.registry import PluginSpec, build_profile
from disagg.gateway.routing.selective import PrefixDecider


@pytest.mark.parametrize(
    ("threshold", "prompt_tokens", "cached_blocks", "disaggregate", "uncached"),
    [
        (256, 100, 0, False, 100),  # short prompt: decode-only
        (256, 1000, 0, True, 1000),  # long and cold: P/D
        (256, 1000, 50, False, 200),  # long but mostly cached on decode (50*16=800)
        (256, 1000, 46, True, 264),
        (0, 5, 0, True, 5),  # threshold 0: always disaggregate
        (256, 10, 99, False, 0),  # cache estimate larger than the prompt is clamped
    ],
)
def test_prefix_decider(
    threshold: int, prompt_tokens: int, cached_blocks: int, disaggregate: bool, uncached: int
) -> None:
    request = RoutingRequest("r", prompt_tokens, (), block_size=16)
    decision = PrefixDecider(threshold).decide(request, cached_blocks)
    assert (decision.disaggregate, decision.uncached_tokens) == (disaggregate, uncached)


def test_prefix_decider_rejects_negative() -> None:
    with pytest.raises(ValueError):
        PrefixDecider(-1)


def _router(threshold: int) -> DisaggRouter:
    pi, di = PrefixIndex(), PrefixIndex()
    prefill = build_profile(
        "prefill",
        [PluginSpec("prefix-affinity"), PluginSpec("least-loaded")],
        pi,
        picker=PluginSpec("max-score", params={"seed": 1}),
    )
    decode = build_profile("decode", [PluginSpec("prefix-affinity"), PluginSpec("least-loaded")],
                           di, picker=PluginSpec("max-score", params={"seed": 1}))  # fmt: skip
    return DisaggRouter(prefill, decode, pi, di, PrefixDecider(threshold))


def _request(text: str) -> RoutingRequest:
    tokens = approximate_tokens(text)
    return RoutingRequest("r", len(tokens), block_hashes(tokens, 16), 16)


P = [Endpoint("http://p1"), Endpoint("http://p2")]
D = [Endpoint("http://d1"), Endpoint("http://d2")]
LONG = " ".join(f"word{i}" for i in range(400))


@pytest.mark.parametrize(
    ("text", "prefill", "decision", "reason"),
    [
        ("hi there", P, "decode_only", "uncached_below_threshold"),
        (LONG, P, "disaggregated", "uncached_above_threshold"),
        (LONG, [], "decode_only", "no_prefill_endpoint"),
    ],
)
def test_plan(text: str, prefill: list[Endpoint], decision: str, reason: str) -> None:
    plan = _router(256).plan(_request(text), prefill, D)
    assert (plan.decision, plan.reason) == (decision, reason)


def test_plan_goes_decode_only_once_the_decode_worker_caches_the_prompt() -> None:
    router = _router(256)
    request = _request(LONG)
    first = router.plan(request, P, D)
    assert first.decision == "disaggregated"
    router.record("decode", request, first.decode.url)
    again = router.plan(request, P, D)
    assert again.decode.url == first.decode.url  # affinity found the cached prefix
    assert again.decision == "decode_only" and again.uncached_tokens < 256


def test_prefill_affinity_and_retry_exclusion() -> None:
    router = _router(0)
    request = _request(LONG)
    router.record("prefill", request, "http://p2")
    assert router.pick_prefill(request, P, D[0]) == P[1]
    assert router.pick_prefill(request, P, D[0], frozenset({"http://p2"})) == P[0]
    assert router.pick_prefill(request, P, D[0], frozenset({"http://p1", "http://p2"})) is None
    assert router.pick_decode(request, D, frozenset({"http://d1", "http://d2"})) is None
    router.retain(["http://p1"], [])
    assert router.prefill_index.workers() == []


def test_prefill_and_decode_pair_only_within_one_kv_layout() -> None:
    """A rollout: old (v1) and new (v2) workers side by side; tensor parallelism must divide."""
    prefill = [Endpoint("http://p-old", kv_layout="v1", tensor_parallel=1),
               Endpoint("http://p-new", kv_layout="v2", tensor_parallel=2)]  # fmt: skip
    router, request = _router(0), _request(LONG)
    for decode, expected in (
        (Endpoint("http://d-old", kv_layout="v1", tensor_parallel=2), "http://p-old"),
        (Endpoint("http://d-new", kv_layout="v2", tensor_parallel=4), "http://p-new"),
    ):
        plan = router.plan(request, prefill, [decode])
        assert plan.decision == "disaggregated"
        for _ in range(5):
            picked = router.pick_prefill(request, prefill, decode)
            assert picked is not None and picked.url == expected
    odd = Endpoint("http://d-odd", kv_layout="v2", tensor_parallel=3)  # 3 % 2 != 0
    assert router.plan(request, prefill, [odd]).reason == "no_compatible_prefill"
    assert router.pick_prefill(request, prefill, odd) is None
    unknown = Endpoint("http://d-static")  # labels unknown: pairs only with unknown
    assert router.plan(request, prefill, [unknown]).reason == "no_compatible_prefill"
    assert kv_compatible(Endpoint("http://p"), unknown)


def test_prompt_tokens_and_chained_hashes() -> None:
    assert approximate_tokens("Hello, world!") == ["Hello", ",", " world", "!"]
    assert len(approximate_tokens("internationalization")) == 3
    assert prompt_tokens({"prompt": [1, 2, 3]}) == [1, 2, 3]
    assert prompt_tokens({"prompt": [[4, 5], [6]]}) == [4, 5]
    assert prompt_tokens({"prompt": ["ab cd", "zz"]}) == ["ab", " cd"]
    assert prompt_tokens({"prompt": 42}) == []
    chat = prompt_tokens({"messages": [{"role": "system", "content": "Be brief."}]})
    assert "".join(map(str, chat)) == "<|system|>\nBe brief.\n<|assistant|>\n"
    a = block_hashes(list(range(40)), 16)
    b = block_hashes([*range(32), 99, 99], 16)
    assert len(a) == 2 and a == b  # only full blocks; the partial tail does not count
    c = block_hashes([0, *range(1, 40)][::-1], 16)
    assert c[0] != a[0]
    d = block_hashes([*range(16), *range(100, 116)], 16)
    assert d[0] == a[0] and d[1] != a[1]
    with pytest.raises(ValueError):
        block_hashes([1], 0)


_ODD_TEXT = "ab cd\u00e9\u4e2d!\t\n  _9.,;x\U0001f600\ud800 internationalization"


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "Hello, world! " * 40},
        {"prompt": "x" * 200 + "   "},
        {"prompt": "  leading and trailing  "},
        {"prompt": ""},
    ]
    + [
        {"prompt": "".join(random.Random(seed).choice(_ODD_TEXT) for _ in range(300))}
        for seed in range(3)
    ]
    + [
        {"prompt": ["one two three " * 20, "ignored"]},
        {"prompt": list(range(50))},
        {"prompt": [list(range(33)), [1]]},
        {"prompt": 42},
        {"messages": [{"role": "system", "content": "Be brief. " * 30}, {"role": "user"}]},
    ],
)
@pytest.mark.parametrize("block_size", [1, 3, 16, 17])
def test_prompt_blocks_are_the_tokens_blocks(body: dict[str, object], block_size: int) -> None:
    """The request path's block-at-a-time hashing equals splitting into tokens first."""
    tokens = prompt_tokens(body)
    assert prompt_blocks(body, block_size) == (len(tokens), block_hashes(tokens, block_size))


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_prompt_blocks_of_every_ascii_character(block_size: int) -> None:
    """ASCII prompts take their own character classes; every ASCII character (controls and
    the separators 0x1c-0x1f included) must split as the token rule does."""
    alphabet = [chr(c) for c in range(128)] + ["internationalization", "  ", "word"]
    rng = random.Random(block_size)
    for _ in range(300):
        body = {"prompt": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))}
        tokens = prompt_tokens(body)
        assert prompt_blocks(body, block_size) == (len(tokens), block_hashes(tokens, block_size))

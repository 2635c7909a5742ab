"""The gateway between real simulator processes: the two legs, the OpenAI client, selection.

Two prefill and two decode sims and one gateway run for the module; each test clears the sims'
request logs, faults and prefix caches first.  Assertions are on what the sims *received* (their
``/sim/requests`` admin endpoint) and on what a client sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_procs import (
    Proc,
    clear,
    long_prompt,
    metric,
    sim_requests,
    start_gateway,
    start_sims,
)


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Proc]]:
    procs = dict(zip(("p1", "p2", "d1", "d2"), start_sims(4), strict=True))
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="module")
def gateway(sims: dict[str, Proc]) -> Iterator[Proc]:
    gw = start_gateway([sims["p1"].url, sims["p2"].url], [sims["d1"].url, sims["d2"].url])
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def clean(sims: dict[str, Proc]) -> None:
    for sim in sims.values():
        clear(sim)


def _legs(sims: dict[str, Proc], request_id: str) -> tuple[list[Any], list[Any]]:
    prefill = [e for n in ("p1", "p2") for e in sim_requests(sims[n], request_id)]
    decode = [e for n in ("d1", "d2") for e in sim_requests(sims[n], request_id)]
    return prefill, decode


def test_two_legs_are_exactly_what_vllm_expects(sims: dict[str, Proc], gateway: Proc) -> None:
    body = {
        "model": "m",
        "prompt": long_prompt(seed="legs"),
        "max_tokens": 7,
        "min_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "kv_transfer_params": {"remote_host": "10.9.9.9"},  # a client must not steer KV pulls
    }
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        text = r.read().decode()
        request_id = r.headers["x-request-id"]
    assert text.endswith("data: [DONE]\n\n")
    (prefill,), (decode,) = _legs(sims, request_id)

    expected_prefill = {k: v for k, v in body.items() if k not in ("stream_options", "min_tokens")}
    expected_prefill.update(
        stream=False,
        max_tokens=1,
        kv_transfer_params={
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        },
    )
    assert prefill["body"] == expected_prefill
    assert prefill["x_request_id"] == decode["x_request_id"] == request_id
    returned = prefill["outcome"]["kv_transfer_params"]
    assert returned["do_remote_prefill"] is True and returned["remote_block_ids"]
    assert decode["body"] == {**body, "kv_transfer_params": returned}  # original + P's, verbatim
    assert decode["outcome"]["prefill"] == "remote"  # it pulled the blocks over the side channel
    assert decode["outcome"]["pulled_bytes"] > 0


def test_chat_prefill_leg_caps_max_completion_tokens(sims: dict[str, Proc], gateway: Proc) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": long_prompt(seed="chat1")}],
        "max_completion_tokens": 5,
    }
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    (prefill,), (decode,) = _legs(sims, r.headers["x-request-id"])
    assert prefill["body"]["max_completion_tokens"] == 1 and prefill["body"]["max_tokens"] == 1
    assert decode["body"]["max_completion_tokens"] == 5 and "max_tokens" not in decode["body"]
    assert r.json()["usage"]["completion_tokens"] == 5


@pytest.fixture
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_completions(sims: dict[str, Proc], client: openai.OpenAI) -> None:
    out = client.completions.create(model="m", prompt=long_prompt(seed="oc"), max_tokens=6)
    assert out.choices[0].text and out.usage is not None and out.usage.completion_tokens == 6
    chunks = list(
        client.completions.create(
            model="m", prompt=long_prompt(seed="s"), max_tokens=6, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices).split() != []
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 6
    decoded = [e for n in ("d1", "d2") for e in sim_requests(sims[n])]
    assert [e["outcome"]["prefill"] for e in decoded] == ["remote", "remote"]


def test_openai_client_chat(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": long_prompt(seed="och")},
        {"role": "user", "content": "hi"},
    ]
    out = client.chat.completions.create(model="m", messages=messages, max_tokens=4)  # type: ignore[arg-type]
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content
    stream = client.chat.completions.create(
        model="m",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    models = client.models.list()
    assert [m.id for m in models.data] == ["m"]


@pytest.fixture
def affinity_gateway(sims: dict[str, Proc]) -> Iterator[Proc]:
    """Decode workers picked by cached prefix alone: with the load scorers a scrape taken while
    the first request still ran (up to a second stale) could outvote the cached prefix, and this
    module is about the decider, not load balancing."""
    config = {"routing": {"decode": {"scorers": [{"type": "prefix-affinity"}]}}}
    gw = start_gateway([sims["p1"].url, sims["p2"].url], [sims["d1"].url, sims["d2"].url],
                       config=config)  # fmt: skip
    yield gw
    gw.stop()


def test_selective_disaggregation(sims: dict[str, Proc], affinity_gateway: Proc) -> None:
    gateway = affinity_gateway
    before = metric(gateway, "disagg_gateway_routing_decisions_total", decision="decode_only")
    short = httpx.post(
        gateway.url + "/v1/completions",
        json={"model": "m", "prompt": "short prompt", "max_tokens": 3},
    )
    assert short.status_code == 200
    prefill, (decode,) = _legs(sims, short.headers["x-request-id"])
    assert prefill == [] and decode["outcome"]["prefill"] == "local"
    assert "kv_transfer_params" not in decode["body"]

    # A long prompt is disaggregated once; repeated, the decode worker caches it: decode-only.
    body = {"model": "m", "prompt": long_prompt(seed="x"), "max_tokens": 3}
    first = httpx.post(gateway.url + "/v1/completions", json=body)
    second = httpx.post(gateway.url + "/v1/completions", json=body)
    p1, (d1,) = _legs(sims, first.headers["x-request-id"])
    p2, (d2,) = _legs(sims, second.headers["x-request-id"])
    assert len(p1) == 1 and d1["outcome"]["prefill"] == "remote"
    assert p2 == [] and d2["outcome"]["cached_tokens"] > 500  # served from the decode cache
    after = metric(gateway, "disagg_gateway_routing_decisions_total", decision="decode_only")
    assert after - before == 2


def test_metrics_export_queue_depth_and_latencies(gateway: Proc) -> None:
    httpx.post(
        gateway.url + "/v1/completions",
        json={"model": "m", "prompt": long_prompt(seed="q"), "max_tokens": 2},
    )
    text = httpx.get(gateway.url + "/metrics").text
    for series in (
        'disagg_gateway_queue_depth{pool="prefill",role="prefill"} 0.0',
        'disagg_gateway_queue_depth{pool="decode",role="decode"} 0.0',
        'disagg_gateway_inflight_requests{pool="decode",role="decode"} 0.0',
        'disagg_gateway_ready_workers{pool="decode",role="decode"} 2.0',
    ):
        assert series in text
    assert metric(gateway, "disagg_gateway_prefill_seconds_count") >= 1
    assert metric(gateway, "disagg_gateway_kv_handoff_seconds_count") >= 1
    assert "disagg_gateway_time_to_first_token_seconds_bucket" in text
    assert "_created" not in text


def test_route_headers_say_where_each_request_went_and_why(
    sims: dict[str, Proc], gateway: Proc
) -> None:
    long = httpx.post(
        gateway.url + "/v1/completions",
        json={"model": "m", "prompt": long_prompt(seed="route"), "max_tokens": 3},
    )
    assert long.status_code == 200
    (prefill,), (decode,) = _legs(sims, long.headers["x-request-id"])
    assert long.headers["x-disagg-route"] == "disaggregated"
    prefill_sim = next(n for n in ("p1", "p2") if sim_requests(sims[n], prefill["x_request_id"]))
    decode_sim = next(n for n in ("d1", "d2") if sim_requests(sims[n], decode["x_request_id"]))
    assert long.headers["x-disagg-prefill-worker"] == sims[prefill_sim].url
    assert long.headers["x-disagg-decode-worker"] == sims[decode_sim].url
    assert ">= 256" in long.headers["x-disagg-route-reason"]

    with httpx.stream(
        "POST",
        gateway.url + "/v1/completions",
        json={"model": "m", "prompt": "short prompt", "max_tokens": 3, "stream": True},
    ) as short:
        short.read()
    assert short.headers["x-disagg-route"] == "decode_only"
    assert "x-disagg-prefill-worker" not in short.headers
    assert short.headers["x-disagg-decode-worker"] in (sims["d1"].url, sims["d2"].url)
    assert "< minUncachedPromptTokens 256" in short.headers["x-disagg-route-reason"]

"""The NIXL P/D protocol between two real simulator processes (VLLM.md, "The P/D request
protocol"): a prefill leg that holds its blocks, a decode leg that pulls them over the side
channel, and every way the pull can fail ending in a local prefill."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from disagg.planner.models import MODELS, kv_bytes_per_token
from disagg.sim.process import SimProcess

MODEL = "m"
PROMPT = "The quick brown fox jumps over the lazy dog. " * 40  # 400 tokens
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


@pytest.fixture(scope="module")
def prefill() -> Iterator[SimProcess]:
    config = '{"kv_connector":"NixlConnector","kv_role":"kv_producer","engine_id":"prefill-0"}'
    with SimProcess(
        "serve", MODEL, "--kv-transfer-config", config, "--sim-speedup", "100",
        "--sim-kv-lease", "30",
    ) as p:  # fmt: skip
        yield p


@pytest.fixture(scope="module")
def short_lease_prefill() -> Iterator[SimProcess]:
    with SimProcess(MODEL, "--sim-speedup", "100", "--sim-kv-lease", "0.2") as p:
        yield p


@pytest.fixture(scope="module")
def decode() -> Iterator[SimProcess]:
    config = '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}'
    with SimProcess(MODEL, "--kv-transfer-config", config, "--sim-speedup", "100") as p:
        yield p


@pytest.fixture(scope="module")
def strict_decode() -> Iterator[SimProcess]:
    config = (
        '{"kv_connector":"NixlConnector","kv_role":"kv_consumer","kv_load_failure_policy":"fail"}'
    )
    with SimProcess(MODEL, "--kv-transfer-config", config, "--sim-speedup", "100") as p:
        yield p


def prefill_leg(sim: SimProcess, rid: str, prompt: str = PROMPT) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "stream": False}
    body["kv_transfer_params"] = PREFILL_PARAMS
    r = httpx.post(sim.url + "/v1/completions", json=body, headers={"X-Request-Id": rid})
    assert r.status_code == 200, r.text
    return dict(r.json())


def decode_leg(
    sim: SimProcess, rid: str, params: dict[str, Any] | None, prompt: str = PROMPT, **extra: Any
) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, **extra}
    if params is not None:
        body["kv_transfer_params"] = params
    return httpx.post(sim.url + "/v1/completions", json=body, headers={"X-Request-Id": rid})


def outcome(sim: SimProcess, rid: str) -> dict[str, Any]:
    entries = httpx.get(sim.url + "/sim/requests", params={"x_request_id": rid}).json()
    return dict(entries["requests"][-1]["outcome"])


def held(sim: SimProcess) -> list[str]:
    return list(httpx.get(sim.url + "/sim/state").json()["held"])


def test_prefill_leg_answers_like_vllm_and_holds_the_blocks(prefill: SimProcess) -> None:
    body = prefill_leg(prefill, "pd-1")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1
    params = body["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert params["remote_engine_id"] == "prefill-0"
    assert params["remote_request_id"] == "cmpl-pd-1"
    assert params["remote_host"] == "localhost"
    state = httpx.get(prefill.url + "/sim/state").json()
    assert params["remote_port"] == state["side_channel_port"]
    assert params["tp_size"] == 1
    (blocks,) = params["remote_block_ids"]  # one KV-cache group, nested as vLLM does
    assert len(blocks) == -(-body["usage"]["prompt_tokens"] // 16)
    assert "cmpl-pd-1" in state["held"]


def test_decode_leg_pulls_over_the_side_channel_then_decodes(
    prefill: SimProcess, decode: SimProcess
) -> None:
    params = prefill_leg(prefill, "pd-2")["kv_transfer_params"]
    r = decode_leg(decode, "pd-2", params, stream=True)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    seen = outcome(decode, "pd-2")
    assert seen["prefill"] == "remote", seen
    per_token = kv_bytes_per_token(MODELS["llama-3.1-8b"])
    assert seen["pulled_bytes"] == per_token * seen["prompt_tokens"]
    assert "cmpl-pd-2" not in held(prefill)  # freed once pulled
    on_prefill = outcome(prefill, "pd-2")
    assert on_prefill["kv_hold"] == "pulled" and on_prefill["pulled_by"].startswith("127.0.0.1:")
    assert on_prefill["kv_transfer_params"]["remote_request_id"] == "cmpl-pd-2"
    nixl = [
        line
        for line in httpx.get(decode.url + "/metrics").text.splitlines()
        if line.startswith("vllm:nixl_bytes_transferred_count")
    ]
    assert float(nixl[0].split()[-1]) >= 1


def _by_source(sim: SimProcess) -> dict[str, float]:
    """``vllm:prompt_tokens_by_source_total`` per source, as a scraper reads it."""
    found = {}
    for line in httpx.get(sim.url + "/metrics").text.splitlines():
        if line.startswith("vllm:prompt_tokens_by_source_total{"):
            source = line.split('source="', 1)[1].split('"', 1)[0]
            found[source] = float(line.split()[-1])
    return found


def test_prompt_tokens_by_source_say_where_the_kv_came_from(
    prefill: SimProcess, decode: SimProcess
) -> None:
    """As vLLM counts them: a pulled prompt is all ``external_kv_transfer``, a local prefill
    ``local_compute`` -- what the GPU tier reads on real vLLM to prove the KV came by NIXL."""
    before = _by_source(decode)
    assert set(before) == {"local_compute", "local_cache_hit", "external_kv_transfer"}
    pulled = "An unseen prompt about pulled blocks. " * 30
    params = prefill_leg(prefill, "pd-src", pulled)["kv_transfer_params"]
    usage = decode_leg(decode, "pd-src", params, pulled).json()["usage"]
    middle = _by_source(decode)
    assert middle["external_kv_transfer"] - before["external_kv_transfer"] == usage["prompt_tokens"]
    assert middle["local_compute"] == before["local_compute"]
    local = "A prompt the decode worker prefills itself. " * 30
    usage = decode_leg(decode, "pd-src-local", None, local).json()["usage"]
    after = _by_source(decode)
    assert after["local_compute"] - middle["local_compute"] == usage["prompt_tokens"]
    assert after["external_kv_transfer"] == middle["external_kv_transfer"]


def test_decode_output_matches_an_aggregated_worker(
    prefill: SimProcess, decode: SimProcess
) -> None:
    params = prefill_leg(prefill, "pd-3")["kv_transfer_params"]
    disaggregated = decode_leg(decode, "pd-3", params).json()
    local = decode_leg(decode, "pd-3-local", None).json()
    assert disaggregated["choices"][0]["text"] == local["choices"][0]["text"]
    assert disaggregated["usage"]["completion_tokens"] == 8
    assert outcome(decode, "pd-3-local")["prefill"] == "local"


def test_a_second_pull_of_the_same_blocks_falls_back(
    prefill: SimProcess, decode: SimProcess
) -> None:
    params = prefill_leg(prefill, "pd-4")["kv_transfer_params"]
    assert decode_leg(decode, "pd-4", params).status_code == 200
    assert decode_leg(decode, "pd-4b", params).status_code == 200
    seen = outcome(decode, "pd-4b")
    assert seen["prefill"] == "fallback"
    assert "no KV held" in seen["pull_error"]


def test_expired_lease_means_local_prefill(
    short_lease_prefill: SimProcess, decode: SimProcess
) -> None:
    params = prefill_leg(short_lease_prefill, "pd-5")["kv_transfer_params"]
    deadline = time.monotonic() + 5
    while "cmpl-pd-5" in held(short_lease_prefill):
        assert time.monotonic() < deadline, "lease never expired"
        time.sleep(0.05)
    r = decode_leg(decode, "pd-5", params)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
    seen = outcome(decode, "pd-5")
    assert seen["prefill"] == "fallback" and "lease expired" in seen["pull_error"]
    assert outcome(short_lease_prefill, "pd-5")["kv_hold"] == "expired"


@pytest.mark.parametrize(
    ("mutation", "why"),
    [
        ({"remote_host": None}, "remote_host"),
        ({"remote_block_ids": []}, "remote_block_ids"),
        ({"remote_port": "5600"}, "remote_port"),
        ({"remote_engine_id": None}, "remote_engine_id"),
    ],
)
def test_invalid_params_mean_local_prefill(
    prefill: SimProcess, decode: SimProcess, mutation: dict[str, Any], why: str
) -> None:
    params = {**prefill_leg(prefill, "pd-6")["kv_transfer_params"], **mutation}
    rid = f"pd-6-{why}"
    assert decode_leg(decode, rid, params).status_code == 200
    seen = outcome(decode, rid)
    assert seen["prefill"] == "local" and why in seen["remote_invalid"]


def test_wrong_engine_unreachable_peer_or_other_prompt_fall_back(
    prefill: SimProcess, decode: SimProcess
) -> None:
    params = prefill_leg(prefill, "pd-7")["kv_transfer_params"]
    cases = {
        "pd-7-engine": ({**params, "remote_engine_id": "someone-else"}, PROMPT, "engine"),
        "pd-7-port": ({**params, "remote_port": 1}, PROMPT, "cannot reach"),
        "pd-7-prompt": (params, PROMPT + " and more", "different prompt"),
    }
    for rid, (p, prompt, why) in cases.items():
        assert decode_leg(decode, rid, p, prompt=prompt).status_code == 200
        seen = outcome(decode, rid)
        assert seen["prefill"] == "fallback" and why in seen["pull_error"], seen
    assert "cmpl-pd-7" in held(prefill)  # none of those pulls released the real blocks


def test_fail_policy_turns_a_failed_pull_into_an_error(
    prefill: SimProcess, strict_decode: SimProcess
) -> None:
    params = {**prefill_leg(prefill, "pd-8")["kv_transfer_params"], "remote_port": 1}
    r = decode_leg(strict_decode, "pd-8", params)
    assert r.status_code == 500
    assert "KV load failed" in r.json()["error"]["message"]
    stream = decode_leg(strict_decode, "pd-8s", params, stream=True)
    assert '"error"' in stream.text and stream.text.endswith("data: [DONE]\n\n")


def test_chat_legs_work_the_same(prefill: SimProcess, decode: SimProcess) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    first = httpx.post(
        prefill.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 1,
              "kv_transfer_params": PREFILL_PARAMS},
        headers={"X-Request-Id": "pd-9"},
    ).json()  # fmt: skip
    params = first["kv_transfer_params"]
    assert params["remote_request_id"] == "chatcmpl-pd-9"
    r = httpx.post(
        decode.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 3, "kv_transfer_params": params},
        headers={"X-Request-Id": "pd-9"},
    )
    assert r.json()["usage"]["completion_tokens"] == 3
    assert outcome(decode, "pd-9")["prefill"] == "remote"


def test_data_parallel_engines_have_their_own_label_port_and_engine_id(decode: SimProcess) -> None:
    with SimProcess(MODEL, "--data-parallel-size", "2", "--sim-speedup", "100",
                    env={"VLLM_NIXL_SIDE_CHANNEL_PORT": "0"}) as dp:  # fmt: skip
        state = httpx.get(dp.url + "/sim/state").json()
        ranks = state["engines"]
        assert state["data_parallel_size"] == 2 and [e["rank"] for e in ranks] == [0, 1]
        assert ranks[1]["engine_id"].endswith("_dp1")
        assert ranks[0]["side_channel_port"] != ranks[1]["side_channel_port"]
        body = {
            "model": MODEL,
            "prompt": PROMPT,
            "max_tokens": 1,
            "kv_transfer_params": PREFILL_PARAMS,
        }
        first = httpx.post(
            dp.url + "/v1/completions",
            json=body,
            headers={"X-Data-Parallel-Rank": "1", "X-Request-Id": "dp-1"},
        ).json()
        params = first["kv_transfer_params"]
        assert params["remote_engine_id"] == ranks[1]["engine_id"]
        assert params["remote_port"] == ranks[1]["side_channel_port"]
        assert decode_leg(decode, "dp-1", params).status_code == 200
        assert outcome(decode, "dp-1")["prefill"] == "remote"
        assert outcome(dp, "dp-1")["engine"] == 1
        metrics = httpx.get(dp.url + "/metrics").text
        for engine in ("0", "1"):
            assert f'vllm:num_requests_running{{engine="{engine}",model_name="{MODEL}"}}' in metrics

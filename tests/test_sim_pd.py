"""The NIXL P/D protocol between real simulator processes (VLLM.md, "The P/D request protocol"),
and every way a handoff fails as real vLLM 0.26 fails it (shared/real-vllm/FAULTS.md): the
silent empty stream under ``fail``, the wrong answer from reused blocks, the engine death on
malformed params, the 5 s serialised handshakes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from disagg.planner.models import MODELS, kv_bytes_per_token
from disagg.sim.process import SimProcess

MODEL = "m"
PROMPT = "The quick brown fox jumps over the lazy dog. " * 40  # 400 tokens, 25 blocks
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
FAST = ("--sim-speedup", "100", "--sim-handshake-timeout", "0.5")


def kv_config(role: str, policy: str | None = None, **extra: Any) -> str:
    import json

    config: dict[str, Any] = {"kv_connector": "NixlConnector", "kv_role": role, **extra}
    if policy:
        config["kv_load_failure_policy"] = policy
    return json.dumps(config)


@pytest.fixture(scope="module")
def prefill() -> Iterator[SimProcess]:
    config = kv_config("kv_producer", engine_id="prefill-0")
    with SimProcess("serve", MODEL, "--kv-transfer-config", config, *FAST) as p:
        yield p


@pytest.fixture(scope="module")
def decode() -> Iterator[SimProcess]:
    """vLLM's default policy: ``fail``."""
    with SimProcess(MODEL, "--kv-transfer-config", kv_config("kv_consumer"), *FAST) as p:
        yield p


@pytest.fixture(scope="module")
def recompute_decode() -> Iterator[SimProcess]:
    config = kv_config("kv_consumer", "recompute")
    with SimProcess(MODEL, "--kv-transfer-config", config, *FAST) as p:
        yield p


def prefill_leg(sim: SimProcess, rid: str, prompt: Any = PROMPT) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "stream": False}
    body["kv_transfer_params"] = PREFILL_PARAMS
    r = httpx.post(sim.url + "/v1/completions", json=body, headers={"X-Request-Id": rid})
    assert r.status_code == 200, r.text
    return dict(r.json())


def decode_leg(
    sim: SimProcess, rid: str, params: dict[str, Any] | None, prompt: Any = PROMPT, **extra: Any
) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, **extra}
    if params is not None:
        body["kv_transfer_params"] = params
    return httpx.post(
        sim.url + "/v1/completions", json=body, headers={"X-Request-Id": rid}, timeout=30
    )


def outcome(sim: SimProcess, rid: str) -> dict[str, Any]:
    entries = httpx.get(sim.url + "/sim/requests", params={"x_request_id": rid}).json()
    return dict(entries["requests"][-1]["outcome"])


def held(sim: SimProcess) -> list[str]:
    return list(httpx.get(sim.url + "/sim/state").json()["held"])


def metric(sim: SimProcess, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(sim.url + "/metrics").text.splitlines()
        if (line.startswith(name + "{") or line.startswith(name + " "))
        and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


def stream_events(response: httpx.Response) -> list[str]:
    return [line for line in response.text.split("\n\n") if line]


def test_prefill_leg_answers_like_vllm_and_holds_the_blocks(prefill: SimProcess) -> None:
    body = prefill_leg(prefill, "pd-1")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1
    params = body["kv_transfer_params"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert params["remote_engine_id"] == "prefill-0"
    assert params["remote_request_id"] == "cmpl-pd-1"
    assert params["remote_host"] == "localhost"
    assert params["remote_num_tokens"] == body["usage"]["prompt_tokens"]
    assert params["remote_blocks_expiry_time"] is None  # as 0.26: D cannot see P's lease
    state = httpx.get(prefill.url + "/sim/state").json()
    assert params["remote_port"] == state["side_channel_port"]
    assert params["tp_size"] == 1
    (blocks,) = params["remote_block_ids"]  # one KV-cache group, nested as vLLM does
    assert len(blocks) == -(-body["usage"]["prompt_tokens"] // 16)
    assert "cmpl-pd-1" in state["held"] and state["held_blocks"] >= len(blocks)
    assert state["kv_cache_usage"] > 0  # held blocks count in vllm:kv_cache_usage_perc


def test_decode_leg_pulls_over_the_side_channel_then_decodes(
    prefill: SimProcess, decode: SimProcess
) -> None:
    external = metric(decode, "vllm:prompt_tokens_by_source_total")
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
    assert metric(decode, "vllm:nixl_bytes_transferred_count") >= 1
    assert metric(decode, "vllm:prompt_tokens_by_source_total") - external == seen["prompt_tokens"]


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


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_load_under_fail_is_a_500_or_a_silent_empty_stream(
    prefill: SimProcess, decode: SimProcess, stream: bool
) -> None:
    """FAULTS.md row 1 (unknown engine id = P restarted): non-streamed 500; streamed 200 with
    no token, no error event, no finish_reason, then [DONE]; D stays healthy."""
    params = {**prefill_leg(prefill, f"pd-f{stream}")["kv_transfer_params"]}
    params["remote_engine_id"] = "an-engine-that-restarted"
    failed = metric(decode, "vllm:nixl_num_failed_transfers_total")
    r = decode_leg(decode, f"pd-f{stream}", params, stream=stream)
    if stream:
        assert r.status_code == 200
        assert stream_events(r) == ["data: [DONE]"]
    else:
        assert r.status_code == 500
        assert r.json()["error"]["message"] == "Internal server error"
    assert metric(decode, "vllm:nixl_num_failed_transfers_total") == failed + 1
    assert metric(decode, "vllm:request_success_total", finished_reason="error")
    assert httpx.get(decode.url + "/health").status_code == 200


def test_chat_stream_under_fail_carries_only_the_role(
    prefill: SimProcess, decode: SimProcess
) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    first = httpx.post(
        prefill.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 1,
              "kv_transfer_params": PREFILL_PARAMS},
    ).json()  # fmt: skip
    params = {**first["kv_transfer_params"], "remote_engine_id": "gone"}
    body = {"model": MODEL, "messages": messages, "stream": True, "kv_transfer_params": params}
    r = httpx.post(decode.url + "/v1/chat/completions", json=body, timeout=30)
    events = stream_events(r)
    assert len(events) == 2 and events[-1] == "data: [DONE]"
    assert '"role":"assistant"' in events[0] and '"finish_reason":null' in events[0]


def test_recompute_prefills_locally_and_answers_right(
    prefill: SimProcess, recompute_decode: SimProcess
) -> None:
    params = {**prefill_leg(prefill, "pd-r")["kv_transfer_params"], "remote_engine_id": "gone"}
    r = decode_leg(recompute_decode, "pd-r", params)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
    seen = outcome(recompute_decode, "pd-r")
    assert seen["prefill"] == "fallback" and "engine id mismatch" in seen["pull_error"]
    local = decode_leg(recompute_decode, "pd-r-local", None).json()
    assert r.json()["choices"][0]["text"] == local["choices"][0]["text"]


@pytest.mark.parametrize("policy", ["fail", "recompute"])
def test_block_ids_out_of_range(prefill: SimProcess, policy: str) -> None:
    config = kv_config("kv_consumer", policy)
    params = prefill_leg(prefill, f"pd-oor-{policy}")["kv_transfer_params"]
    (blocks,) = params["remote_block_ids"]
    params = {**params, "remote_block_ids": [[*blocks[:-1], 10**9]]}
    with SimProcess(MODEL, "--kv-transfer-config", config, *FAST) as d:
        r = decode_leg(d, "pd-oor", params)
        if policy == "fail":
            assert r.status_code == 500
        else:
            assert r.status_code == 200 and outcome(d, "pd-oor")["prefill"] == "fallback"
        assert "NIXL_ERR_INVALID_PARAM" in outcome(d, "pd-oor")["pull_error"]
        assert httpx.get(d.url + "/health").status_code == 200


def test_expired_lease_with_intact_blocks_still_answers_right(decode: SimProcess) -> None:
    with SimProcess(MODEL, "--sim-kv-lease", "0.2", *FAST) as p:
        params = prefill_leg(p, "pd-5")["kv_transfer_params"]
        deadline = time.monotonic() + 5
        while "cmpl-pd-5" in held(p):
            assert time.monotonic() < deadline, "lease never expired"
            time.sleep(0.05)
        r = decode_leg(decode, "pd-5", params)
        local = decode_leg(decode, "pd-5-local", None, prompt=PROMPT + " ")
        assert r.status_code == 200 and outcome(decode, "pd-5")["prefill"] == "remote"
        assert outcome(p, "pd-5")["kv_hold"] == "expired"
        assert metric(p, "vllm:nixl_num_kv_expired_reqs_total") == 1
        assert "after its lease expired" in p.log()
        assert local.status_code == 200


def test_expired_lease_with_reused_blocks_answers_wrong_and_poisons_the_cache() -> None:
    """FAULTS.md: 200 with wrong tokens under either policy; D counts a success and caches the
    bad KV (the same prompt later, without params, returns the same wrong text); only P knows."""
    blocks = ("--num-gpu-blocks-override", "40")
    config = kv_config("kv_consumer", "recompute")
    with (
        SimProcess(MODEL, "--sim-kv-lease", "0.2", *blocks, *FAST) as p,
        SimProcess(MODEL, "--kv-transfer-config", config, *FAST) as d,
        SimProcess(MODEL, *FAST) as reference,
    ):
        params = prefill_leg(p, "pd-x")["kv_transfer_params"]
        while "cmpl-pd-x" in held(p):
            time.sleep(0.05)
        other = " ".join(f"w{i}" for i in range(600))  # needs every block P has
        httpx.post(p.url + "/v1/completions", json={"model": MODEL, "prompt": other,
                                                     "max_tokens": 1})  # fmt: skip
        wrong = decode_leg(d, "pd-x", params)
        right = decode_leg(reference, "pd-x", None)
        assert wrong.status_code == 200 and outcome(d, "pd-x")["prefill"] == "remote"
        assert wrong.json()["choices"][0]["text"] != right.json()["choices"][0]["text"]
        assert metric(d, "vllm:nixl_num_failed_transfers_total") == 0
        again = decode_leg(d, "pd-x-again", None)  # no params: served from the poisoned cache
        assert again.json()["choices"][0]["text"] == wrong.json()["choices"][0]["text"]
        assert metric(p, "vllm:nixl_num_kv_expired_reqs_total") == 1


MALFORMED = {
    "remote_host missing": lambda p: {k: v for k, v in p.items() if k != "remote_host"},
    "fewer block ids": lambda p: {**p, "remote_block_ids": [p["remote_block_ids"][0][:-3]]},
    "block ids as a string": lambda p: {**p, "remote_block_ids": str(p["remote_block_ids"])},
    "empty block list": lambda p: {**p, "remote_block_ids": []},
}


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_malformed_params_kill_the_decode_engine(prefill: SimProcess, shape: str) -> None:
    params = MALFORMED[shape](prefill_leg(prefill, f"pd-m-{len(shape)}")["kv_transfer_params"])
    keep = {"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"}
    with SimProcess(MODEL, *FAST, env=keep) as d:
        started = time.monotonic()
        r = decode_leg(d, "pd-m", params)
        assert r.status_code == 500
        if shape == "remote_host missing":  # hangs first
            assert time.monotonic() - started >= 0.5
        assert httpx.get(d.url + "/health").status_code == 503
        assert decode_leg(d, "pd-m-after", None).status_code == 503
    with SimProcess(MODEL, *FAST) as d:  # without keep-alive the server exits, as vLLM's
        assert decode_leg(d, "pd-m", params).status_code == 500
        assert d.proc is not None
        d.proc.wait(10)


def test_unreachable_side_channel_costs_a_serialised_handshake_each(
    prefill: SimProcess, decode: SimProcess
) -> None:
    params = prefill_leg(prefill, "pd-u")["kv_transfer_params"]
    results: list[float] = []

    def one(i: int) -> None:
        bad = {**params, "remote_engine_id": f"unknown-{i}", "remote_port": 9}
        start = time.monotonic()
        assert decode_leg(decode, f"pd-u{i}", bad).status_code == 500
        results.append(time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results)[0] >= 0.45 and sorted(results)[1] >= 0.95, results  # 0.5 s each


def test_a_known_engine_id_ignores_a_wrong_port(prefill: SimProcess, decode: SimProcess) -> None:
    first = prefill_leg(prefill, "pd-k1")["kv_transfer_params"]
    assert decode_leg(decode, "pd-k1", first).status_code == 200  # handshake: agent cached
    second = {**prefill_leg(prefill, "pd-k2")["kv_transfer_params"], "remote_port": 9}
    assert decode_leg(decode, "pd-k2", second).status_code == 200
    assert outcome(decode, "pd-k2")["prefill"] == "remote"


def test_a_restarted_prefill_with_the_same_engine_id_fails_the_old_params(
    decode: SimProcess,
) -> None:
    config = kv_config("kv_producer", engine_id="fixed-id")
    with SimProcess(MODEL, "--kv-transfer-config", config, *FAST) as p:
        port = p.port
        params = prefill_leg(p, "pd-s1")["kv_transfer_params"]
        assert decode_leg(decode, "pd-s1", params).status_code == 200
        stale = prefill_leg(p, "pd-s2")["kv_transfer_params"]
        side = {"VLLM_NIXL_SIDE_CHANNEL_PORT": str(stale["remote_port"])}
    with SimProcess(MODEL, "--kv-transfer-config", config, *FAST, port=port, env=side):
        r = decode_leg(decode, "pd-s2", stale)
        assert r.status_code == 500 and "stale NIXL agent" in outcome(decode, "pd-s2")["pull_error"]


def test_heartbeats_keep_a_queued_request_s_blocks_alive(prefill: SimProcess) -> None:
    """D holds the request in its queue longer than P's lease; its heartbeats keep the lease."""
    lease = ("--sim-kv-lease", "1")
    with (
        SimProcess(MODEL, *lease, *FAST) as p,
        SimProcess(MODEL, *lease, "--max-num-seqs", "1", "--sim-speedup", "5") as d,
    ):
        warm = {**prefill_leg(p, "pd-h0", PROMPT + "x")["kv_transfer_params"]}  # handshake
        assert decode_leg(d, "pd-h0", warm, prompt=PROMPT + "x", max_tokens=1).status_code == 200
        busy = threading.Thread(target=decode_leg, args=(d, "pd-busy", None),
                                kwargs={"prompt": "busy", "max_tokens": 2500})  # fmt: skip
        busy.start()
        while not httpx.get(d.url + "/sim/state").json()["running"]:
            time.sleep(0.01)
        params = prefill_leg(p, "pd-h")["kv_transfer_params"]
        r = decode_leg(d, "pd-h", params)
        busy.join(60)
        assert outcome(d, "pd-busy")["e2e_s"] > 3  # the request waited > 3 leases
        assert r.status_code == 200 and outcome(p, "pd-h")["kv_hold"] == "pulled"


def test_token_ids_out_of_vocabulary_are_a_400(decode: SimProcess) -> None:
    for ids in ([1, -1], [1, 128256], [2**64]):
        r = decode_leg(decode, "pd-v", None, prompt=ids)
        assert r.status_code == 400 and "out of vocabulary" in r.json()["error"]["message"]
    assert httpx.get(decode.url + "/health").status_code == 200


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

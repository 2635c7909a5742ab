"""The simulator's OpenAI/vLLM HTTP surface, against a real simulator process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from disagg.sim import tokenizer
from disagg.sim.process import SimProcess

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(
        MODEL,
        "--served-model-name",
        "llama",
        "extra-name",
        "--max-model-len",
        "4096",
        "--sim-speedup",
        "200",
        "--disable-log-requests",  # a vLLM flag the simulator does not model
        "--enforce-eager",
    ) as process:
        yield process


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    frames = text.split("\n\n")
    assert frames[-1] == ""
    payloads = []
    for frame in frames[:-1]:
        assert frame.startswith("data: "), frame
        payloads.append(frame[len("data: ") :])
    return payloads


def test_health_is_200_with_empty_body(sim: SimProcess) -> None:
    r = httpx.get(sim.url + "/health")
    assert r.status_code == 200
    assert r.content == b""


def test_models_lists_every_served_name_with_max_model_len(sim: SimProcess) -> None:
    cards = httpx.get(sim.url + "/v1/models").json()["data"]
    assert [c["id"] for c in cards] == ["llama", "extra-name"]
    assert all(c["max_model_len"] == 4096 and c["root"] == MODEL for c in cards)


def test_completion_counts_tokens_by_the_documented_rule(sim: SimProcess) -> None:
    prompt = "Hello, world! internationalization"
    r = httpx.post(
        sim.url + "/v1/completions", json={"model": "llama", "prompt": prompt, "max_tokens": 5}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["usage"] == {
        "prompt_tokens": 7,  # Hello , ␣world ! ␣internat ionaliza tion
        "completion_tokens": 5,
        "total_tokens": 12,
        "prompt_tokens_details": None,
    }
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["text"] == "".join(
        tokenizer.output_token(tokenizer.encode(prompt), i) for i in range(5)
    )
    assert body["kv_transfer_params"] is None


def test_output_is_deterministic_and_default_length_stops(sim: SimProcess) -> None:
    bodies = [
        httpx.post(sim.url + "/v1/completions", json={"model": "llama", "prompt": "same"}).json()
        for _ in range(2)
    ]
    assert bodies[0]["choices"][0]["text"] == bodies[1]["choices"][0]["text"]
    assert bodies[0]["choices"][0]["finish_reason"] == "stop"
    assert bodies[0]["usage"]["completion_tokens"] == 16  # --sim-default-max-tokens


def test_x_request_id_names_the_response_and_is_recorded(sim: SimProcess) -> None:
    body = {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(sim.url + "/v1/chat/completions", json=body, headers={"X-Request-Id": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    assert r.json()["id"] == "chatcmpl-req-42"
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    seen = httpx.get(sim.url + "/sim/requests", params={"x_request_id": "req-42"}).json()
    (entry,) = seen["requests"]
    assert entry["body"] == body
    assert entry["path"] == "/v1/chat/completions"
    assert entry["headers"]["x-request-id"] == "req-42"
    assert entry["outcome"]["prefill"] == "local"
    assert entry["outcome"]["completion_tokens"] == 2


def test_streaming_chat_has_role_first_and_usage_last(sim: SimProcess) -> None:
    body = {
        "model": "llama",
        "messages": [{"role": "user", "content": "stream please"}],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = httpx.post(sim.url + "/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = sse_events(r.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    tokens = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(tokens) == 4
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_streaming_completion_without_usage(sim: SimProcess) -> None:
    body = {"model": "llama", "prompt": "abc", "max_tokens": 3, "stream": True}
    payloads = sse_events(httpx.post(sim.url + "/v1/completions", json=body).text)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 3
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]


def test_the_official_openai_client_works(sim: SimProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused")
    chat = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 3
    stream = client.completions.create(model="llama", prompt="x", max_tokens=3, stream=True)
    assert len("".join(chunk.choices[0].text for chunk in stream).split()) == 3


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/v1/completions", {"model": "llama"}, 400, "prompt"),
        (
            "/v1/completions",
            {"model": "llama", "prompt": "x", "max_tokens": "3"},
            400,
            "max_tokens",
        ),
        ("/v1/completions", {"model": "llama", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        (
            "/v1/completions",
            {"model": "llama", "prompt": "x", "max_tokens": 5000},
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            {"model": "llama", "prompt": "x", "stream_options": {"include_usage": True}},
            400,
            "stream_options",
        ),
        ("/v1/chat/completions", {"model": "llama", "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"model": "llama", "messages": "hi"}, 400, "messages"),
        ("/v1/completions", {"model": "llama", "prompt": "x", "n": 2}, 400, "n"),
        ("/v1/completions", [1, 2], 400, None),
    ],
)
def test_bad_requests_get_openai_error_bodies(
    sim: SimProcess, path: str, body: object, status: int, param: str | None
) -> None:
    r = httpx.post(sim.url + path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["param"] == param and error["message"]


def test_malformed_json_is_a_400(sim: SimProcess) -> None:
    r = httpx.post(
        sim.url + "/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]


def test_metrics_use_vllm_names_and_labels(sim: SimProcess) -> None:
    httpx.post(sim.url + "/v1/completions", json={"model": "llama", "prompt": "m", "max_tokens": 3})
    text = httpx.get(sim.url + "/metrics").text
    labels = 'engine="0",model_name="llama"'
    for name in (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_prefill_time_seconds_count",
        "vllm:request_decode_time_seconds_count",
        "vllm:request_queue_time_seconds_count",
        "vllm:nixl_xfer_time_seconds_count",
        "vllm:nixl_bytes_transferred_count",
    ):
        assert f"{name}{{{labels}}}" in text, name
    assert "vllm:gpu_cache_usage_perc" not in text
    success = [
        line
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total") and 'finished_reason="length"' in line
    ]
    assert success and float(success[0].split()[-1]) >= 1


async def test_many_concurrent_streams_each_get_every_token(sim: SimProcess) -> None:
    """48 streams batched together: each gets all of its own tokens, in order."""
    import asyncio

    body = {"model": "llama", "max_tokens": 50, "stream": True}

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, list[dict[str, object]]]:
        prompt = f"concurrent {i}"
        r = await client.post(sim.url + "/v1/completions", json={**body, "prompt": prompt})
        return prompt, [json.loads(p) for p in sse_events(r.text)[:-1]]

    limits = httpx.Limits(max_connections=48)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(48)))
    for prompt, chunks in results:
        assert len(chunks) == 50
        text = "".join(str(c["choices"][0]["text"]) for c in chunks)  # type: ignore[index]
        ids = tokenizer.encode(prompt)
        assert text == "".join(tokenizer.output_token(ids, i) for i in range(50))

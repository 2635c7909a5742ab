"""Bad client input gets a specific OpenAI-style 400 (never a 500); the API key guards /v1."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_procs import Proc, sim_requests, start_gateway, start_sim

MAX_BODY = 4096


@pytest.fixture(scope="module")
def decode() -> Iterator[Proc]:
    sim = start_sim()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(decode: Proc) -> Iterator[Proc]:
    gw = start_gateway([], [decode.url], config={"maxBodyBytes": MAX_BODY})
    yield gw
    gw.stop()


OK = {"model": "m", "prompt": "hi", "max_tokens": 2}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

CASES = [
    # (path, raw body, expected param, expected code, words in the message)
    ("/v1/completions", b"{", None, "invalid_json", "not valid JSON"),
    ("/v1/completions", b"\xff\xfe{}", None, "invalid_json", "not valid JSON"),
    ("/v1/completions", b"[" * 50_000 + b"]" * 50_000, None, "request_too_large", "limit"),
    ("/v1/completions", b"[" * 2000 + b"]" * 2000, None, "invalid_json", "not valid JSON"),
    ("/v1/completions", b"[1, 2]", None, "invalid_request", "JSON object"),
    ("/v1/completions", b'{"prompt": "hi"}', "model", "invalid_request", "'model' is required"),
    ("/v1/completions", b'{"model": 7, "prompt": "x"}', "model", "invalid_request", "string"),
    ("/v1/completions", b'{"model": "m"}', "prompt", "invalid_request", "'prompt' is required"),
    ("/v1/completions", b'{"model": "m", "prompt": 12}', "prompt", "invalid_request", "string"),
    ("/v1/completions", b'{"model": "m", "prompt": []}', "prompt", "invalid_request", "non-empty"),
    ("/v1/completions", b'{"model": "m", "prompt": [1, "a"]}', "prompt", "invalid_request",
     "token"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "stream": "yes"}', "stream",
     "invalid_request", "boolean"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "max_tokens": "5"}', "max_tokens",
     "invalid_request", "integer"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "max_tokens": 0}', "max_tokens",
     "invalid_request", ">= 1"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "max_tokens": true}', "max_tokens",
     "invalid_request", "integer"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "temperature": "hot"}', "temperature",
     "invalid_request", "number"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "stream_options": 5}', "stream_options",
     "invalid_request", "object"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "n": -1}', "n", "invalid_request", ">= 1"),
    ("/v1/chat/completions", b'{"model": "m"}', "messages", "invalid_request", "required"),
    ("/v1/chat/completions", b'{"model": "m", "messages": "hi"}', "messages", "invalid_request",
     "non-empty list"),
    ("/v1/chat/completions", b'{"model": "m", "messages": []}', "messages", "invalid_request",
     "non-empty list"),
    ("/v1/chat/completions", b'{"model": "m", "messages": ["hi"]}', "messages[0]",
     "invalid_request", "object"),
    ("/v1/chat/completions", b'{"model": "m", "messages": [{"content": "x"}]}',
     "messages[0].role", "invalid_request", "role"),
    ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": 3}]}',
     "messages[0].content", "invalid_request", "content"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw", "param", "code", "words"), CASES)
def test_bad_input_is_a_specific_400(
    gateway: Proc, decode: Proc, path: str, raw: bytes, param: str | None, code: str, words: str
) -> None:
    before = len(sim_requests(decode))
    reply = httpx.post(gateway.url + path, content=raw,
                       headers={"content-type": "application/json"})  # fmt: skip
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert words in error["message"]
    assert len(sim_requests(decode)) == before  # nothing reached a worker


def test_oversize_body_without_content_length(gateway: Proc) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    reply = httpx.post(gateway.url + "/v1/completions", content=chunks())
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "request_too_large"


def test_worker_client_errors_pass_through(gateway: Proc) -> None:
    reply = httpx.post(gateway.url + "/v1/completions", json={**OK, "model": "no-such-model"})
    assert reply.status_code == 404 and "no-such-model" in reply.json()["error"]["message"]
    good = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert good.status_code == 200
    assert httpx.get(gateway.url + "/v1/completions").status_code == 405


def test_api_key(decode: Proc) -> None:
    secret = "s3cr3t-key-value"
    gw = start_gateway([], [decode.url], "--log-level", "debug", env={"DISAGG_API_KEY": secret})
    try:
        url = gw.url + "/v1/completions"
        assert httpx.post(url, json=OK).status_code == 401
        wrong = httpx.post(url, json=OK, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        right = httpx.post(url, json=OK, headers={"Authorization": f"Bearer {secret}"})
        assert right.status_code == 200
        assert httpx.get(gw.url + "/v1/models").status_code == 401
        assert httpx.get(gw.url + "/health").status_code == 200  # probes stay open
        assert httpx.get(gw.url + "/metrics").status_code == 200
        assert secret not in gw.output()
        # the worker never sees the client's key
        last = sim_requests(decode)[-1]
        assert last["headers"].get("authorization") is None
    finally:
        gw.stop()

"""Bad client input gets a specific OpenAI-style 4xx (never a 5xx) with the route headers; a
client that goes away is a 499, not an error; header and body limits hold; the API key guards
/v1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_procs import Proc, metric, set_faults, sim_requests, start_gateway, start_sim

MAX_BODY = 4096
CONFIG = {
    "maxBodyBytes": MAX_BODY,
    "model": {"vocabSize": 1000},
    "limits": {"maxHeaderBytes": 8192, "maxHeaders": 40},
    "timeouts": {"bodyReadSeconds": 1, "headerReadSeconds": 1},
}


@pytest.fixture(scope="module")
def decode() -> Iterator[Proc]:
    sim = start_sim()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(decode: Proc) -> Iterator[Proc]:
    gw = start_gateway([], [decode.url], config=CONFIG)
    yield gw
    gw.stop()


OK = {"model": "m", "prompt": "hi", "max_tokens": 2}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

CASES = [
    # (path, raw body, expected param, expected code, words in the message)
    ("/v1/completions", b"{", None, "invalid_json", "not valid JSON"),
    ("/v1/completions", b"\xff\xfe{}", None, "invalid_json", "not valid UTF-8"),
    # CESU-8: a surrogate pair encoded as two 3-byte sequences (json.loads(bytes) takes them)
    ("/v1/completions", b'{"model": "m", "prompt": "\xed\xa0\x80\xed\xb0\x80"}', None,
     "invalid_json", "not valid UTF-8"),
    ("/v1/completions", b'{"model": "m", "prompt": "a\\ud800b"}', None, "invalid_json",
     "surrogate"),
    ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "\\udfff", "content": "x"}]}',
     None, "invalid_json", "surrogate"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "temperature": NaN}', None,
     "invalid_json", "not valid JSON"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "max_tokens": 1e999}', "max_tokens",
     "invalid_request", "integer"),
    ("/v1/completions", b'{"model": "m", "prompt": "x", "max_tokens": 99999999999999999999}',
     "max_tokens", "invalid_request", "2^63"),
    ("/v1/completions", b'{"model": "m", "prompt": [1, -5]}', "prompt", "invalid_request",
     "out of vocabulary"),
    ("/v1/completions", b'{"model": "m", "prompt": [[1], [1000]]}', "prompt", "invalid_request",
     "out of vocabulary"),
    ("/v1/completions", b'{"model": "m", "prompt": [18446744073709551616]}', "prompt",
     "invalid_request", "out of vocabulary"),
    ("/v1/completions", b'{"model": "' + b"m" * 300 + b'", "prompt": "x"}', "model",
     "invalid_request", "256"),
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
    assert reply.headers["x-disagg-route"] == "none"
    assert reply.headers["x-request-id"].startswith("disagg-")


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


def test_unknown_paths_and_methods_answer_openai_errors(gateway: Proc) -> None:
    missing = httpx.get(gateway.url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    assert missing.headers["x-disagg-route"] == "none" and missing.headers["x-request-id"]
    wrong = httpx.get(gateway.url + "/v1/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"


def test_oversize_headers_get_431_and_the_gateway_keeps_serving(gateway: Proc) -> None:
    big = {"x-filler": "y" * 20_000}
    reply = httpx.post(gateway.url + "/v1/completions", json=OK, headers=big)
    assert reply.status_code == 431
    assert reply.json()["error"]["code"] == "request_header_fields_too_large"
    assert reply.headers["x-disagg-route"] == "none"
    many = {f"x-h{i}": "v" for i in range(60)}
    assert httpx.post(gateway.url + "/v1/completions", json=OK, headers=many).status_code == 431
    assert httpx.post(gateway.url + "/v1/completions", json=OK).status_code == 200


def _raw(gateway: Proc, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(data)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_that_never_arrives_gets_408(gateway: Proc) -> None:
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"model\"")  # fmt: skip
    with _raw(gateway, head) as sock:
        started = time.monotonic()
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in answer
    assert b"x-disagg-route: none" in answer.lower()
    assert 0.9 < time.monotonic() - started < 5


def test_headers_that_never_finish_close_the_connection(gateway: Proc) -> None:
    with _raw(gateway, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ") as sock:
        started = time.monotonic()
        assert _read_all(sock) == b""
    assert time.monotonic() - started < 5


def test_a_client_leaving_is_a_499_logged_at_info_without_a_traceback(
    gateway: Proc, decode: Proc
) -> None:
    closed = metric(gateway, "disagg_gateway_requests_total", path="/v1/completions", status="499")
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"model\"")  # fmt: skip
    _raw(gateway, head).close()  # mid-body
    set_faults(decode, extra_latency_s=3.0)
    try:
        body = json.dumps({**OK, "prompt": "slow"}).encode()
        request = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        with _raw(gateway, request):
            deadline = time.monotonic() + 5
            while not [e for e in sim_requests(decode) if e["body"].get("prompt") == "slow"]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        # while the worker is still busy with it
        deadline = time.monotonic() + 5
        while metric(gateway, "disagg_gateway_requests_total", path="/v1/completions",
                     status="499") < closed + 2:  # fmt: skip
            assert time.monotonic() < deadline, gateway.output()[-2000:]
            time.sleep(0.05)
    finally:
        set_faults(decode)
    log = gateway.output()
    assert "client went away" in log and "Traceback" not in log
    assert "ERROR" not in log


def test_a_client_leaving_mid_stream_is_not_an_error(gateway: Proc, decode: Proc) -> None:
    body = json.dumps({**OK, "prompt": "a long one", "max_tokens": 300, "stream": True}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    aborted = _sim_metric(decode, 'finished_reason="abort"')
    set_faults(decode, slowdown=50.0)  # a slow stream: the client leaves in the middle
    try:
        with _raw(gateway, request) as sock:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while _sim_metric(decode, 'finished_reason="abort"') == aborted:  # the worker stops too
            assert time.monotonic() < deadline, "the decode worker never learned"
            time.sleep(0.05)
    finally:
        set_faults(decode)
    log = gateway.output()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]
    assert httpx.post(gateway.url + "/v1/completions", json=OK).status_code == 200


def _sim_metric(sim: Proc, labels: str) -> float:
    text = httpx.get(sim.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{") and labels in line
    )


def _answers(data: bytes) -> list[tuple[int, bytes]]:
    """The HTTP/1.1 answers in ``data``, in order: (status, body)."""
    import httptools

    answers: list[tuple[int, bytes]] = []

    class Collect:
        body = b""

        def on_body(self, chunk: bytes) -> None:
            self.body += chunk

        def on_message_complete(self) -> None:
            answers.append((parser.get_status_code(), self.body))
            self.body = b""

    parser = httptools.HttpResponseParser(Collect())
    parser.feed_data(data)
    return answers


def _post(target: bytes, body: bytes, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/%s\r\nHost: x\r\n%s" % (target, version, extra)
    return head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize(
    "target", [b"/v1/completions", b"/v1/completions?tag=1", b"/v1/%63ompletions"]
)
def test_every_wire_form_of_a_completion_request_is_answered(gateway: Proc, target: bytes) -> None:
    """Pipelined requests (completions, a chat, a health check) are answered in order on one
    connection, whatever form the target takes; HTTP/1.0 is answered and closed."""
    whole = json.dumps(OK).encode()
    chat = json.dumps(CHAT | {"max_tokens": 2}).encode()
    pipelined = (_post(target, whole) + _post(b"/v1/chat/completions", chat)
                 + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                 + _post(target, whole, extra=b"Connection: close\r\n"))  # fmt: skip
    with _raw(gateway, pipelined) as sock:
        answers = _answers(_read_all(sock))
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[0][1])["object"] == "text_completion"
    assert json.loads(answers[1][1])["object"] == "chat.completion"
    assert json.loads(answers[3][1])["object"] == "text_completion"
    with _raw(gateway, _post(target, whole, version=b"1.0")) as sock:
        answer = _read_all(sock)  # the gateway closes after answering HTTP/1.0
    assert answer.startswith(b"HTTP/1.1 200 ") and b"text_completion" in answer


def test_expect_100_continue_gets_a_go_ahead_before_the_body(gateway: Proc) -> None:
    body = json.dumps(OK).encode()
    head = _post(b"/v1/completions", b"", extra=b"Expect: 100-continue\r\n")
    head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body))
    with _raw(gateway, head) as sock:
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        answer = b""
        while not (answers := _answers(answer)):
            answer += sock.recv(65536)
    assert answers[0][0] == 200 and json.loads(answers[0][1])["object"] == "text_completion"

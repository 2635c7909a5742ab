"""A generator of hostile HTTP requests for the gateway, and a raw-socket client to send them.

Each request is raw bytes, so that nothing in an HTTP library can tidy it up: invalid UTF-8 and
CESU-8 bodies, lone surrogate escapes, ``NaN``, huge and negative numbers, wrong types in every
field the gateway reads, malformed JSON, prompts of token ids outside any vocabulary, deep
nesting, bodies that stop half way (the client then hangs up, or stalls until the gateway's
body timeout), oversized and too many headers, and a few well-formed requests mixed in.  The
generator is seeded: a failure names the seed and index that reproduce it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

PATHS = ("/v1/completions", "/v1/chat/completions")
WEIRD_VALUES: tuple[object, ...] = (
    None, True, False, 0, -1, -(2**63), 2**63, 2**64 + 1, 10**30, -(10**30), 1.5, -0.0, 1e308,
    "", "x", "\u0000", "é" * 3, [], [1], [[]], {}, {"a": {"b": [1, {"c": None}]}}, [None] * 5,
)  # fmt: skip
RAW_NUMBERS = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" * 400, b"-0", b"0.0")
FIELDS = ("model", "prompt", "messages", "stream", "max_tokens", "max_completion_tokens",
          "min_tokens", "n", "temperature", "top_p", "stream_options", "stop", "seed",
          "logprobs", "kv_transfer_params", "presence_penalty", "user")  # fmt: skip


@dataclass(frozen=True)
class Hostile:
    kind: str
    data: bytes
    """Everything the client sends."""
    hang_up_after: bool = False
    """The client closes right after sending (a partial body): no answer is expected."""


def _http(path: str, body: bytes, headers: dict[str, str] | None = None,
          length: int | None = None) -> bytes:  # fmt: skip
    head = [f"POST {path} HTTP/1.1", "Host: gateway", "Connection: close",
            "Content-Type: application/json",
            f"Content-Length: {len(body) if length is None else length}"]  # fmt: skip
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _valid(rng: random.Random, chat: bool) -> dict[str, object]:
    words = " ".join(
        rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(rng.randint(1, 400))
    )
    body: dict[str, object] = {"model": "m", "max_tokens": rng.randint(1, 4)}
    if chat:
        body["messages"] = [{"role": "user", "content": words}]
    else:
        body["prompt"] = words
    if rng.random() < 0.3:
        body["stream"] = True
    return body


class Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds: list[tuple[str, Callable[[], Hostile]]] = [
            ("wrong_type", self.wrong_type),
            ("raw_number", self.raw_number),
            ("bad_text", self.bad_text),
            ("token_ids", self.token_ids),
            ("malformed_json", self.malformed_json),
            ("messages", self.messages),
            ("deep", self.deep),
            ("partial_body", self.partial_body),
            ("stalled_body", self.stalled_body),
            ("big_headers", self.big_headers),
            ("bad_http", self.bad_http),
            ("client_kv_params", self.client_kv_params),
            ("valid", self.valid),
        ]
        self.weights = [14, 8, 12, 8, 10, 8, 3, 6, 1, 4, 4, 4, 18]

    def __call__(self) -> Hostile:
        _, make = self.rng.choices(self.kinds, self.weights)[0]
        return make()

    def _path(self) -> tuple[str, bool]:
        path = self.rng.choice(PATHS)
        return path, path.endswith("chat/completions")

    def wrong_type(self) -> Hostile:
        path, chat = self._path()
        body = _valid(self.rng, chat)
        for _ in range(self.rng.randint(1, 3)):
            field = self.rng.choice(FIELDS)
            if self.rng.random() < 0.2:
                body.pop(field, None)
            else:
                body[field] = self.rng.choice(WEIRD_VALUES)
        return Hostile("wrong_type", _http(path, json.dumps(body).encode()))

    def raw_number(self) -> Hostile:
        path, chat = self._path()
        field = self.rng.choice(("max_tokens", "temperature", "n", "top_p", "min_tokens", "seed"))
        text = json.dumps(_valid(self.rng, chat))[:-1] + f', "{field}": '
        body = text.encode() + self.rng.choice(RAW_NUMBERS) + b"}"
        return Hostile("raw_number", _http(path, body))

    def bad_text(self) -> Hostile:
        """Text no worker can encode: lone surrogates, CESU-8, invalid UTF-8, NULs."""
        path, chat = self._path()
        poison = self.rng.choice((b"\\ud800", b"\\udfff", b"a\\ud83d", b"\\udc00\\ud800",
                                  b"\xed\xa0\x80", b"\xed\xa0\xbd\xed\xb8\x80", b"\xff\xfe",
                                  b"\xc3\x28", b"\xe2\x82", b"\x00", b"\\u0000"))  # fmt: skip
        where = self.rng.choice(("prompt", "model", "key", "role"))
        if where == "key":
            body = b'{"model": "m", "prompt": "x", "' + poison + b'": 1}'
        elif where == "model":
            body = b'{"model": "m' + poison + b'", "prompt": "x"}'
        elif chat:
            role = poison if where == "role" else b"user"
            body = b'{"model": "m", "messages": [{"role": "' + role + b'", "content": "hi ' + \
                poison + b'"}]}'  # fmt: skip
        else:
            body = b'{"model": "m", "prompt": "hello ' + poison + b' world"}'
        return Hostile("bad_text", _http(path, body))

    def token_ids(self) -> Hostile:
        ids: list[int] = [self.rng.randint(0, 1000) for _ in range(self.rng.randint(1, 50))]
        ids[self.rng.randrange(len(ids))] = self.rng.choice(
            (-1, -(2**63), 128256, 2**31, 2**64, 10**40, 5)
        )
        prompt: object = ids if self.rng.random() < 0.7 else [ids, [1, 2]]
        body = {"model": "m", "prompt": prompt, "max_tokens": 2}
        return Hostile("token_ids", _http("/v1/completions", json.dumps(body).encode()))

    def malformed_json(self) -> Hostile:
        good = json.dumps(_valid(self.rng, False)).encode()
        body = self.rng.choice((
            good[: self.rng.randint(0, len(good) - 1)], good + b"garbage", b"\xef\xbb\xbf" + good,
            good.replace(b'"', b"'"), b"", b"null", b"[]", b'"just a string"', b"{,}",
            b'{"model": "m", "model": 5, "prompt": "x"}', b"{" * 5,
        ))  # fmt: skip
        return Hostile("malformed_json", _http(self.rng.choice(PATHS), body))

    def messages(self) -> Hostile:
        messages: object = self.rng.choice((
            [], "hi", [None], ["hi"], [{"content": "x"}], [{"role": 5, "content": "x"}],
            [{"role": "user", "content": 7}], [{"role": "user", "content": [None, 5, "x"]}],
            [{"role": "user", "content": [{"type": "text", "text": {"deep": True}}]}],
            [{"role": "user", "content": [{"type": "image_url"}]}],
            [{"role": "user", "content": None}], {"role": "user"},
        ))  # fmt: skip
        body = {"model": "m", "messages": messages, "max_tokens": 2}
        return Hostile("messages", _http("/v1/chat/completions", json.dumps(body).encode()))

    def deep(self) -> Hostile:
        depth = self.rng.choice((50, 900, 5000, 100_000))
        body = b'{"model": "m", "prompt": "x", "extra": ' + b"[" * depth + b"]" * depth + b"}"
        return Hostile("deep", _http(self.rng.choice(PATHS), body))

    def partial_body(self) -> Hostile:
        body = json.dumps(_valid(self.rng, False)).encode()
        cut = self.rng.randint(0, max(0, len(body) - 1))
        return Hostile("partial_body", _http("/v1/completions", body[:cut], length=len(body)),
                       hang_up_after=True)  # fmt: skip

    def stalled_body(self) -> Hostile:
        body = json.dumps(_valid(self.rng, False)).encode()
        return Hostile("stalled_body", _http("/v1/completions", body[:5], length=len(body)))

    def big_headers(self) -> Hostile:
        body = json.dumps(_valid(self.rng, False)).encode()
        if self.rng.random() < 0.5:
            headers = {"X-Big": "v" * self.rng.choice((20_000, 100_000, 1_000_000))}
        else:
            headers = {f"X-H{i}": "v" for i in range(self.rng.choice((150, 1000)))}
        return Hostile("big_headers", _http("/v1/completions", body, headers))

    def bad_http(self) -> Hostile:
        body = json.dumps(_valid(self.rng, False)).encode()
        data = self.rng.choice((
            b"GARBAGE\r\n\r\n",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: -5\r\n\r\n" + body,
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Bad: a\x00b\r\n"
            b"Content-Length: 2\r\n\r\n{}",
            b"GET /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"POST /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 0\r\n\r\n",
            _http("/v1/completions", body, {"Content-Type": "text/plain; charset=latin-1"}),
            _http("/v1/completions", body, {"Authorization": "Bearer \u00e9".encode("utf-8")
                                            .decode("latin-1")}),
        ))  # fmt: skip
        return Hostile("bad_http", data)

    def client_kv_params(self) -> Hostile:
        """A client naming a host for a decode worker to pull KV from: must be dropped."""
        body = _valid(self.rng, False)
        body["kv_transfer_params"] = {
            "do_remote_prefill": True, "remote_host": "10.9.9.9", "remote_port": 1,
            "remote_block_ids": [[1]], "remote_engine_id": "x", "remote_request_id": "y",
        }  # fmt: skip
        return Hostile("client_kv_params", _http("/v1/completions", json.dumps(body).encode()))

    def valid(self) -> Hostile:
        path, chat = self._path()
        return Hostile("valid", _http(path, json.dumps(_valid(self.rng, chat)).encode()))


async def send(port: int, request: Hostile, timeout: float = 30.0) -> int | None:
    """Send one request on its own connection; the answer's status (None: no answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(request.data)
            await writer.drain()
        except ConnectionError:
            pass  # the gateway refused mid-send (e.g. headers too large): read its answer
        if request.hang_up_after:
            return None
        answer = b""
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                answer += chunk
        if not answer.startswith(b"HTTP/1."):
            return None
        return int(answer.split(b" ", 2)[1])
    except ConnectionError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

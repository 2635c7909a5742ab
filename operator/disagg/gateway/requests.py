"""Client request validation and the bodies of the two P/D legs.

Validation is strict where a wrong type would make a worker fail in a confusing way (or the
gateway raise), and silent about fields it does not know: workers get the body as the client
sent it, so new OpenAI/vLLM parameters pass through.  Every problem becomes ``BadRequest`` -- an
OpenAI-style 400 that names the parameter -- so client input never produces a 500.  The JSON
itself is read strictly: UTF-8 only (CESU-8 and other invalid bytes are refused, where Python's
``json.loads(bytes)`` would let surrogates through), no lone UTF-16 surrogate escapes (they
cannot be re-encoded for the workers), no ``NaN``/``Infinity``; integers the gateway checks must
fit 63 bits, and prompt token ids must lie in the model's vocabulary when it is known.

A client-supplied ``kv_transfer_params`` is removed: it would let a client point a decode worker at
an arbitrary host to pull KV blocks from.  The legs follow vLLM's NIXL proxy protocol (VLLM.md):
the prefill leg is a copy with ``stream: false``, ``max_tokens: 1`` (and
``max_completion_tokens: 1`` if present), ``stream_options`` and ``min_tokens`` removed and
``kv_transfer_params.do_remote_decode``; the decode leg is the original body plus the prefill
answer's ``kv_transfer_params`` verbatim.

JSON goes through msgspec (measured on the benchmark's bodies: parsing 5-6x and encoding 25x
faster than the standard library, whose encoder is pure Python with ``ensure_ascii=False``;
msgspec over orjson because it keeps integers past 64 bits exact, as the standard library
does, where orjson turns them into floats).  msgspec refuses everything the strict reading
refuses; any body it refuses is read again by the standard library, so a client sees exactly
the error message it always did.  A body is parsed once; the prefill leg is a shallow copy of
the parsed dict (only top-level keys change), never a deep copy or a second parse.  One
difference remains, in a field the gateway does not check: a number too large for a float
(``1e999``) reaches the worker as ``null``, where the standard library wrote ``Infinity`` --
which is not JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from disagg.gateway.routing.frozen import fast_init

Kind = Literal["completions", "chat"]


class BadRequest(Exception):
    """Client input the gateway refuses; rendered as an OpenAI-style error body."""

    def __init__(
        self, message: str, param: str | None = None, code: str = "invalid_request"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@fast_init
@dataclass(frozen=True)
class ClientRequest:
    kind: Kind
    path: str
    """The worker path for both legs: ``/v1/completions`` or ``/v1/chat/completions``."""
    body: dict[str, Any]
    """The client body minus ``kv_transfer_params``."""
    stream: bool
    model: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_INT_FIELDS = {"max_tokens": 1, "max_completion_tokens": 1, "min_tokens": 0, "n": 1}
_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


MAX_INT = 2**63 - 1


def _check_token_ids(ids: list[Any], vocab_size: int | None) -> None:
    limit = vocab_size if vocab_size is not None else 2**32
    for token in ids:
        if not 0 <= token < limit:
            raise BadRequest(f"token id {token} is out of vocabulary (0..{limit - 1})", "prompt")


def _check_prompt(prompt: Any, vocab_size: int | None) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return
        if all(_is_int(p) for p in prompt):
            _check_token_ids(prompt, vocab_size)
            return
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            for ids in prompt:
                _check_token_ids(ids, vocab_size)
            return
    raise BadRequest(
        "'prompt' must be a string, a non-empty list of strings, a list of token ids or a list "
        "of lists of token ids",
        "prompt",
    )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of message objects", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}].role must be a string", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(
                f"messages[{i}].content must be a string, a list of parts or null",
                f"messages[{i}].content",
            )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def load_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no lone surrogates, no NaN/Infinity; ``BadRequest`` otherwise."""
    try:
        body = _DECODER.decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        return _load_json_slowly(raw)  # refused: the standard library says why
    if not isinstance(body, dict):
        return _load_json_slowly(raw)
    return body


def loads(raw: bytes) -> Any:
    """Lenient JSON (a worker's answer): what the standard library accepts, fast when strict."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.MsgspecError, RecursionError):
        return json.loads(raw)


def _load_json_slowly(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not valid UTF-8 (byte {exc.start}): JSON must be UTF-8",
            None,
            "invalid_json",
        ) from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    if "\\u" in text:  # only an escape can spell a lone surrogate in valid UTF-8
        try:
            encode(body)
        except UnicodeEncodeError:
            raise BadRequest(
                "request body contains a lone UTF-16 surrogate escape (e.g. \\ud800), which is "
                "not text",
                None,
                "invalid_json",
            ) from None
    return body


def parse_client_request(
    raw: bytes, kind: Kind, max_body_bytes: int, vocab_size: int | None = None
) -> ClientRequest:
    """Validate a client body; raises ``BadRequest`` with a specific message."""
    if len(raw) > max_body_bytes:
        raise BadRequest(
            f"request body is {len(raw)} bytes; the limit is {max_body_bytes}",
            None,
            "request_too_large",
        )
    body = load_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise BadRequest("'model' is required and must be a string of 1 to 256 characters", "model")
    if kind == "completions":
        if "prompt" not in body:
            raise BadRequest("'prompt' is required", "prompt")
        _check_prompt(body["prompt"], vocab_size)
    else:
        if "messages" not in body:
            raise BadRequest("'messages' is required", "messages")
        _check_messages(body["messages"])
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    for name, minimum in _INT_FIELDS.items():
        value = body.get(name)
        if value is not None and (not _is_int(value) or not minimum <= value <= MAX_INT):
            raise BadRequest(f"'{name}' must be an integer >= {minimum} (and below 2^63)", name)
    for name in _NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and not _is_number(value):
            raise BadRequest(f"'{name}' must be a number", name)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("'stream_options' must be an object", "stream_options")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise BadRequest(
                "'stream_options.include_usage' must be a boolean", "stream_options.include_usage"
            )
    body.pop("kv_transfer_params", None)
    path = "/v1/completions" if kind == "completions" else "/v1/chat/completions"
    return ClientRequest(kind, path, body, bool(stream), model)


PREFILL_KV_TRANSFER_PARAMS: Mapping[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def prefill_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The prefill leg: compute the prompt's KV, generate one token, keep the blocks for decode."""
    leg = dict(body)  # top-level keys change, nested values are shared and never mutated
    leg["stream"] = False
    leg["max_tokens"] = 1
    if "max_completion_tokens" in leg:
        leg["max_completion_tokens"] = 1
    leg.pop("stream_options", None)
    leg.pop("min_tokens", None)
    leg["kv_transfer_params"] = dict(PREFILL_KV_TRANSFER_PARAMS)
    return leg


def decode_body(body: Mapping[str, Any], kv_transfer_params: Mapping[str, Any]) -> dict[str, Any]:
    """The decode leg: the original body plus the prefill answer's params, untouched."""
    leg = dict(body)
    leg["kv_transfer_params"] = kv_transfer_params
    return leg


def encode(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (raises ``UnicodeEncodeError`` on a lone surrogate, as before)."""
    try:
        return _ENCODER.encode(body)
    except msgspec.MsgspecError:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def error_body(message: str, type_: str, code: int | str, param: str | None = None) -> bytes:
    """An OpenAI-style error object."""
    return encode({"error": {"message": message, "type": type_, "param": param, "code": code}})

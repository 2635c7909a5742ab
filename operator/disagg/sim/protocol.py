"""The OpenAI/vLLM wire format: parse a request body into a plan, and build response bodies.

Pure functions over JSON-shaped dicts, no HTTP: the app calls :func:`parse_request` and turns a
:class:`BadRequest` into vLLM's error body.  Shapes follow vLLM's OpenAI server, including the
top-level ``kv_transfer_params`` that the P/D protocol rides on, and vLLM's rule that
``stream_options`` is an error on a non-streaming request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from disagg.modeltokenizer import ModelTokenizer, TokenizerError
from disagg.sim import tokenizer
from disagg.sim.request import MalformedRemote, RemotePrefill


class BadRequest(ValueError):
    """A client error: ``status`` and an OpenAI-style body built by :func:`error_body`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(
                status, "BadRequestError" if status < 500 else "InternalServerError"
            ),
            "param": param,
            "code": status,
        }
    }


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes) -> Any:
    """The request body as JSON, strictly: UTF-8 without lone surrogates, no NaN/Infinity
    (what a strict JSON parser such as vLLM's refuses too)."""
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_no_constant)
        if "\\u" in text:  # escapes may spell lone surrogates
            json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    return body


@dataclass(frozen=True)
class ParsedRequest:
    """What the engine needs from a completions or chat body."""

    chat: bool
    model: str
    prompt_ids: list[int]
    max_tokens: int
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    remote_decode: bool
    remote: RemotePrefill | MalformedRemote | None


def _int_field(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{name}' must be an integer", name)
    if value < minimum:
        raise BadRequest(f"'{name}' must be at least {minimum}, got {value}", name)
    return value


def _prompt_ids(body: dict[str, Any], chat: bool, model: ModelTokenizer | None) -> list[int]:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", "messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest("each message must be an object with a string 'role'", "messages")
        if model is not None:
            try:
                return model.encode_chat(messages)
            except TokenizerError as exc:
                raise BadRequest(str(exc), "messages") from None
        return tokenizer.encode(tokenizer.render_chat(messages))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        ids = model.encode_prompt(prompt) if model is not None else tokenizer.encode(prompt)
    elif isinstance(prompt, list) and all(_is_int(t) for t in prompt):
        ids = [int(t) for t in prompt]
        vocab = model.vocab_size if model is not None else tokenizer.VOCAB_SIZE
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:  # vLLM's check, and its wording
            raise BadRequest(f"Token id {bad} is out of vocabulary", "prompt")
    elif prompt is None:
        raise BadRequest("'prompt' is required", "prompt")
    else:
        raise BadRequest(
            "'prompt' must be a string, a list of token ids, or a list of one of those "
            "(the simulator serves one prompt per request)",
            "prompt",
        )
    if not ids:
        raise BadRequest("the prompt is empty", "prompt")
    return ids


def _remote_prefill(params: dict[str, Any]) -> RemotePrefill | MalformedRemote:
    """Read ``kv_transfer_params`` as vLLM's NixlConnector does: it trusts them.  A missing or
    mistyped field is not a local prefill but a dead engine (FAULTS.md), so it is reported as
    :class:`MalformedRemote` and the engine dies when it reaches the request."""
    host = params.get("remote_host")
    if host is None:
        return MalformedRemote("kv_transfer_params without remote_host", hangs=True)
    blocks = params.get("remote_block_ids")
    if isinstance(blocks, list) and blocks and all(isinstance(g, list) for g in blocks):
        blocks = blocks[0]  # one KV-cache group
    if not isinstance(blocks, list) or not blocks or not all(_is_int(b) for b in blocks):
        return MalformedRemote(f"remote_block_ids is not a non-empty list of ids: {blocks!r:.80}")
    engine_id, port = params.get("remote_engine_id"), params.get("remote_port")
    request_id = params.get("remote_request_id")
    for name, value, ok in (
        ("remote_engine_id", engine_id, isinstance(engine_id, str) and engine_id != ""),
        ("remote_request_id", request_id, isinstance(request_id, str) and request_id != ""),
        ("remote_host", host, isinstance(host, str) and host != ""),
        ("remote_port", port, _is_int(port)),
    ):
        if not ok:
            return MalformedRemote(f"{name} is malformed: {value!r:.80}")
    tp = params.get("tp_size", 1)
    return RemotePrefill(
        engine_id=str(engine_id),
        request_id=str(request_id),
        block_ids=tuple(int(b) for b in blocks),
        host=str(host),
        port=int(port),  # type: ignore[arg-type]
        tp_size=tp if _is_int(tp) else 1,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(
    body: Any,
    chat: bool,
    served: tuple[str, ...],
    max_model_len: int,
    default_max_tokens: int,
    model_tokenizer: ModelTokenizer | None = None,
) -> ParsedRequest:
    """``model_tokenizer``: the model's own tokenizer (``--tokenizer``), else the sim's rule."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model", served[0])
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    if model not in served:
        raise BadRequest(f"The model `{model}` does not exist.", "model", status=404)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise BadRequest(
                "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        if not isinstance(options, dict):
            raise BadRequest("'stream_options' must be an object", "stream_options")
    n = _int_field(body, "n", 1)
    if n not in (None, 1):
        raise BadRequest("the simulator serves n=1 only", "n")
    prompt_ids = _prompt_ids(body, chat, model_tokenizer)
    given = _int_field(body, "max_completion_tokens", 1) if chat else None
    if given is None:
        given = _int_field(body, "max_tokens", 1)
    if len(prompt_ids) >= max_model_len:
        raise BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {len(prompt_ids)} input tokens. Please reduce the length of the input.",
            "messages" if chat else "prompt",
        )
    if given is not None and len(prompt_ids) + given > max_model_len:
        raise BadRequest(
            f"'max_tokens' is too large: {given}. This model's maximum context length is "
            f"{max_model_len} tokens and your request has {len(prompt_ids)} input tokens "
            f"({given} > {max_model_len} - {len(prompt_ids)}).",
            "max_tokens",
        )
    max_tokens = (
        given if given is not None else min(default_max_tokens, max_model_len - len(prompt_ids))
    )
    params = body.get("kv_transfer_params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'kv_transfer_params' must be an object", "kv_transfer_params")
    params = params or {}
    remote = _remote_prefill(params) if params.get("do_remote_prefill") else None
    return ParsedRequest(
        chat=chat,
        model=model,
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        max_tokens_given=given is not None,
        stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        remote_decode=bool(params.get("do_remote_decode")),
        remote=remote,
    )


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens} if cached_tokens else None,
    }


def response_body(
    parsed: ParsedRequest,
    response_id: str,
    text: str,
    finish_reason: str,
    usage_: dict[str, Any],
    kv_transfer_params: dict[str, Any] | None,
) -> dict[str, Any]:
    if parsed.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
    return {
        "id": response_id,
        "object": "chat.completion" if parsed.chat else "text_completion",
        "created": int(time.time()),
        "model": parsed.model,
        "choices": [choice],
        "usage": usage_,
        "system_fingerprint": None,
        "kv_transfer_params": kv_transfer_params,
    }


def chunk_body(
    parsed: ParsedRequest,
    response_id: str,
    created: int,
    text: str | None,
    finish_reason: str | None,
    first: bool = False,
) -> dict[str, Any]:
    """One streamed chunk; chat's first chunk carries the role (``text=None`` for role only)."""
    choice: dict[str, Any]
    if parsed.chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    choice["stop_reason"] = None
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk" if parsed.chat else "text_completion",
        "created": created,
        "model": parsed.model,
        "choices": [choice],
    }
    if parsed.include_usage:
        body["usage"] = None
    return body


def usage_chunk(
    parsed: ParsedRequest, response_id: str, created: int, usage_: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion.chunk" if parsed.chat else "text_completion",
        "created": created,
        "model": parsed.model,
        "choices": [],
        "usage": usage_,
    }

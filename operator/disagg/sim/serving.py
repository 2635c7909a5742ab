"""One completion request over HTTP: parse, submit to the engine, answer -- whole or as SSE.

The engine emits token, finish and error events; this module turns them into vLLM's response
bodies and stream frames, records what happened for ``GET /sim/requests``, and applies the
HTTP-visible faults (an error status before anything is sent, a delayed start, a response that
dies after N tokens).  A client that goes away aborts its request, freeing its KV blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from json.encoder import encode_basestring_ascii as encode_json_string
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from disagg.modeltokenizer import ModelTokenizer
from disagg.sim import protocol
from disagg.sim.clock import sleep_until
from disagg.sim.config import SimConfig
from disagg.sim.engine import CapacityError, Engine
from disagg.sim.recorder import Recorder
from disagg.sim.request import (
    ErrorEvent,
    Event,
    FinishEvent,
    MalformedRemote,
    Request,
    TokenEvent,
)

log = logging.getLogger("disagg.sim.serving")
ENGINE_DIED = "EngineCore encountered an issue (simulated by fault injection)"
DISCONNECT_POLL_S = 0.5
"""How often a non-streaming handler checks whether its client left (vLLM aborts those)."""
DONE = "data: [DONE]\n\n"


def error_response(message: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(protocol.error_body(message, status, param), status_code=status)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


_TEXT_MARK = "\x00text\x00"


def token_framer(
    parsed: protocol.ParsedRequest, response_id: str, created: int
) -> Callable[[str], str]:
    """``text -> SSE frame`` of a token chunk without a finish reason, byte for byte what
    ``_sse(chunk_body(...))`` writes, with the JSON around the text rendered once per stream:
    at a batch of 64 streams the simulator writes 64 frames per ~5 ms step, and building and
    encoding each body whole was a large share of its CPU time per token."""
    frame = _sse(protocol.chunk_body(parsed, response_id, created, _TEXT_MARK, None))
    head, tail = frame.split(encode_json_string(_TEXT_MARK))

    def framed(text: str) -> str:
        return head + encode_json_string(text) + tail

    return framed


class _DyingResponse(Response):
    """Starts a response, then drops the connection: a worker that died mid-answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        raise ConnectionAbortedError("simulated worker death (fault injection)")


def _die(mode: str) -> None:
    if mode == "exit":
        log.error("fault injection: exiting mid-request")
        logging.shutdown()
        os._exit(1)
    raise ConnectionAbortedError("simulated worker death (fault injection)")


def _corrupt(params: dict[str, Any], how: str) -> dict[str, Any]:
    """The ``corrupt_kv_params`` fault: a prefill answer a decode engine must never see."""
    blocks = params["remote_block_ids"][0]
    if how == "no_remote_host":
        del params["remote_host"]
    elif how == "fewer_blocks":
        params["remote_block_ids"] = [blocks[: max(0, len(blocks) - 2)]]
    elif how == "blocks_as_string":
        params["remote_block_ids"] = str(params["remote_block_ids"])
    elif how == "empty_blocks":
        params["remote_block_ids"] = []
    elif how == "wrong_host":
        params["remote_host"] = "10.255.255.1"
    elif how == "wrong_port":
        params["remote_port"] = params["remote_port"] + 1000
    return params


class CompletionService:
    """``POST /v1/completions`` and ``/v1/chat/completions`` over one engine."""

    def __init__(
        self, config: SimConfig, engines: list[Engine], recorder: Recorder, max_model_len: int
    ) -> None:
        self.config = config
        self.engines = engines
        self.recorder = recorder
        self.max_model_len = max_model_len
        self.model_tokenizer: ModelTokenizer | None = None
        """The model's tokenizer when the simulator has its files (``--tokenizer``)."""

    def pick_engine(self, http: HTTPRequest) -> Engine:
        """The data-parallel engine for a request: the ``X-data-parallel-rank`` header if valid
        (as vLLM honours it), else the least loaded (fewest waiting, then running)."""
        rank = http.headers.get("x-data-parallel-rank")
        if rank is not None and rank.isdigit() and int(rank) < len(self.engines):
            return self.engines[int(rank)]
        return min(self.engines, key=lambda e: (len(e.waiting) + len(e.loading), len(e.running)))

    async def handle(self, http: HTTPRequest, chat: bool) -> Response:
        arrived = time.monotonic()
        raw = await http.body()
        entry = self.recorder.start(http.method, http.url.path, dict(http.headers), raw)
        outcome: dict[str, Any] = entry["outcome"]
        engine = self.pick_engine(http)
        faults = engine.faults
        if faults.error_rate and random.random() < faults.error_rate:
            outcome.update(status=faults.error_status, injected="error")
            return error_response("simulated failure (fault injection)", faults.error_status)
        try:
            parsed = protocol.parse_request(
                protocol.loads(raw),
                chat,
                self.config.served_model_names,
                self.max_model_len,
                self.config.default_max_tokens,
                self.model_tokenizer,
            )
        except protocol.BadRequest as exc:
            outcome["status"] = exc.status
            return error_response(str(exc), exc.status, exc.param)
        if faults.extra_latency_s:
            await asyncio.sleep(faults.extra_latency_s)
        # The API server's share of TTFT, counted from arrival: the simulator's own parsing
        # so far is part of it, not extra.
        api_s = engine.timer.request_seconds(len(parsed.prompt_ids)) / self.config.speedup
        if arrived + api_s > time.monotonic():
            await sleep_until(arrived + api_s)
        base = http.headers.get("x-request-id") or uuid.uuid4().hex
        response_id = ("chatcmpl-" if chat else "cmpl-") + base
        req = Request(
            request_id=response_id,
            prompt_ids=parsed.prompt_ids,
            max_tokens=parsed.max_tokens,
            length_finish="length" if parsed.max_tokens_given else "stop",
            max_model_len=self.max_model_len,
            hold_for_remote_decode=parsed.remote_decode,
            remote=parsed.remote,
            notes=outcome,
        )
        outcome.update(
            request_id=response_id, prompt_tokens=len(parsed.prompt_ids), engine=engine.rank
        )
        if isinstance(parsed.remote, MalformedRemote):
            outcome["remote_malformed"] = parsed.remote.problem
        if not engine.alive:
            outcome["status"] = 503
            return error_response("the engine is not running", 503)
        try:
            engine.submit(req)
        except CapacityError as exc:
            outcome["status"] = 400
            return error_response(str(exc), 400, "prompt")
        die_at = -1
        if faults.die_after_tokens >= 0 and random.random() < faults.die_rate:
            die_at = faults.die_after_tokens
        headers = {"x-request-id": base}
        if parsed.stream:
            stream = self._stream(engine, req, parsed, response_id, outcome, die_at)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        return await self._whole(http, engine, req, parsed, response_id, outcome, die_at, headers)

    async def _whole(
        self,
        http: HTTPRequest,
        engine: Engine,
        req: Request,
        parsed: protocol.ParsedRequest,
        response_id: str,
        outcome: dict[str, Any],
        die_at: int,
        headers: dict[str, str],
    ) -> Response:
        text: list[str] = []
        try:
            while True:
                if len(text) == die_at:
                    engine.abort(req)
                    outcome["injected"] = "died"
                    if engine.faults.die_mode == "error":
                        outcome["status"] = 500
                        return error_response(ENGINE_DIED, 500)
                    if engine.faults.die_mode == "exit":
                        _die("exit")
                    return _DyingResponse()
                try:
                    event = await asyncio.wait_for(req.events.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if await http.is_disconnected():
                        outcome["status"] = 499  # nginx's "client closed request"
                        return Response(b"", status_code=499)  # nobody reads it
                    continue
                if isinstance(event, TokenEvent):
                    text.append(event.text)
                elif isinstance(event, FinishEvent):
                    break
                else:
                    outcome.update(status=event.status, pull_error=req.pull_error or None)
                    return error_response(event.message, event.status)
        finally:
            engine.abort(req)  # no-op once finished; frees the blocks if the client left
        self._record_done(req, outcome, len(text))
        kv_params = self._kv_transfer_params(engine, req)
        outcome["kv_transfer_params"] = kv_params
        usage = protocol.usage(len(parsed.prompt_ids), len(text), req.cached_tokens)
        body = protocol.response_body(
            parsed, response_id, "".join(text), req.finish_reason, usage, kv_params
        )
        return JSONResponse(body, headers=headers)

    async def _stream(
        self,
        engine: Engine,
        req: Request,
        parsed: protocol.ParsedRequest,
        response_id: str,
        outcome: dict[str, Any],
        die_at: int,
    ) -> AsyncIterator[str]:
        die_mode = engine.faults.die_mode
        created = int(time.time())
        frame = token_framer(parsed, response_id, created)
        sent = 0
        pending: Event | None = None
        try:
            if parsed.chat:
                yield _sse(protocol.chunk_body(parsed, response_id, created, "", None, first=True))
            while True:
                if sent == die_at:
                    outcome["injected"] = "died"
                    engine.abort(req)
                    if die_mode == "error":
                        outcome["status"] = 500
                        yield _sse(protocol.error_body(ENGINE_DIED, 500))
                        yield DONE
                        return
                    _die(die_mode)
                event = pending if pending is not None else await req.events.get()
                pending = None
                if isinstance(event, ErrorEvent):
                    outcome.update(status=event.status, pull_error=req.pull_error or None)
                    if event.silent_in_stream:  # vLLM: no token, no error, no finish_reason
                        outcome["silent"] = True
                        if parsed.include_usage:
                            usage = protocol.usage(len(parsed.prompt_ids), sent, 0)
                            yield _sse(protocol.usage_chunk(parsed, response_id, created, usage))
                    else:
                        yield _sse(protocol.error_body(event.message, event.status))
                    yield DONE
                    return
                if isinstance(event, FinishEvent):
                    break
                # The last token's chunk carries finish_reason: look one event ahead.
                finish = None
                if not req.events.empty():
                    pending = req.events.get_nowait()
                    if isinstance(pending, FinishEvent):
                        finish, pending = pending.reason, None
                sent += 1
                if finish is None:
                    yield frame(event.text)
                else:
                    body = protocol.chunk_body(parsed, response_id, created, event.text, finish)
                    yield _sse(body)
                if finish is not None:
                    break
            self._record_done(req, outcome, sent)
            if parsed.include_usage:
                usage = protocol.usage(len(parsed.prompt_ids), sent, req.cached_tokens)
                yield _sse(protocol.usage_chunk(parsed, response_id, created, usage))
            yield DONE
        finally:
            engine.abort(req)

    def _record_done(self, req: Request, outcome: dict[str, Any], completion_tokens: int) -> None:
        gaps = [b - a for a, b in itertools.pairwise(req.token_sim_times)]
        now = time.monotonic()
        outcome.update(
            queue_time_s=(req.scheduled_at or now) - req.arrival,
            ttft_s=(req.first_token_at or now) - req.arrival,
            e2e_s=now - req.arrival,
            itl_sim_s={"median": statistics.median(gaps), "max": max(gaps)} if gaps else None,
            status=200,
            prefill=req.prefill_source,
            pull_error=req.pull_error or None,
            pulled_bytes=req.pulled_bytes,
            cached_tokens=req.cached_tokens,
            completion_tokens=completion_tokens,
            finish_reason=req.finish_reason,
        )

    def _kv_transfer_params(self, engine: Engine, req: Request) -> dict[str, Any] | None:
        """vLLM's answer on a prefill leg: where and what a decode worker pulls."""
        if not req.hold_for_remote_decode or not engine.held.holds(req.request_id):
            return None
        params: dict[str, Any] = {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": [list(req.blocks)],
            "remote_engine_id": engine.engine_id,
            "remote_request_id": req.request_id,
            "remote_host": self.config.side_channel_host,
            "remote_port": engine.side_channel_port,
            "tp_size": self.config.tensor_parallel_size,
            "remote_num_tokens": req.num_prompt_tokens,
            "remote_blocks_expiry_time": None,  # vLLM 0.26: D cannot know when P's lease ends
        }
        return _corrupt(params, engine.faults.corrupt_kv_params)

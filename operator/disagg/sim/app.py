"""The simulator's HTTP surface: vLLM's OpenAI server routes plus ``/sim/*`` admin routes.

Handlers translate HTTP to engine requests and back and hold no scheduling logic.  Failure
injection lives here because the failures are HTTP-visible: an error status before anything is
sent, a delayed start, or a connection that dies after N tokens without ``[DONE]`` (or a process
that exits, like a crashed pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, fields, replace
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from disagg.sim import protocol
from disagg.sim.config import ConfigError, FaultConfig, SimConfig
from disagg.sim.engine import CapacityError, Engine
from disagg.sim.metrics import SimMetrics
from disagg.sim.recorder import Recorder
from disagg.sim.request import ErrorEvent, Event, FinishEvent, Request, TokenEvent
from disagg.sim.sidechannel import SideChannelServer, make_puller
from disagg.sim.timing import StepTimer

log = logging.getLogger("disagg.sim.app")
SIM_VERSION = "0.11.0+disagg.sim"
ENGINE_DIED = "EngineCore encountered an issue (simulated by fault injection)"
DISCONNECT_POLL_S = 0.5
"""How often a non-streaming handler checks whether its client left (vLLM aborts those)."""


class _DyingResponse:
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


def _error(message: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(protocol.error_body(message, status, param), status_code=status)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class Simulator:
    """One simulated vLLM server: engine, side channel, recorder and the routes over them."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.timer = StepTimer.build(
            config.model,
            config.model_spec,
            config.gpu,
            config.tensor_parallel_size,
            config.link_gbps,
        )
        self.metrics = SimMetrics(config.served_model_names[0])
        self.engine = Engine(config, self.timer, self.metrics)
        self.engine.puller = make_puller(self.engine)
        self.side_channel = SideChannelServer(
            self.engine,
            config.side_channel_host,
            config.side_channel_port,
            config.side_channel_port_explicit,
        )
        self.recorder = Recorder(config.record_limit)
        capacity = self.engine.kv.num_blocks * config.block_size
        if config.max_model_len is not None and config.max_model_len > capacity:
            raise ConfigError(  # vLLM refuses to start in this case too
                f"--max-model-len {config.max_model_len} is larger than the {capacity} tokens "
                f"the KV cache holds ({self.engine.kv.num_blocks} blocks of {config.block_size}); "
                "lower it or raise --gpu-memory-utilization / --num-gpu-blocks-override"
            )
        self.max_model_len = config.max_model_len or min(131_072, capacity)

    # -- lifecycle -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.side_channel.start()
        self.engine.start()
        log.info(
            "simulating %s (%s on %s, tp=%d), %d KV blocks of %d tokens, speed-up %g",
            self.config.model,
            self.timer.model.name,
            self.timer.gpu.name,
            self.config.tensor_parallel_size,
            self.engine.kv.num_blocks,
            self.config.block_size,
            self.config.speedup,
        )
        try:
            yield
        finally:
            await self.engine.stop()
            await self.side_channel.stop()

    def app(self) -> Starlette:
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/ping", self.health, methods=["GET", "POST"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/reset_prefix_cache", self.reset_prefix_cache, methods=["POST"]),
            Route("/sim/requests", self.sim_requests, methods=["GET", "DELETE"]),
            Route("/sim/faults", self.sim_faults, methods=["GET", "POST", "DELETE"]),
            Route("/sim/state", self.sim_state, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=self.lifespan)

    # -- plain routes ------------------------------------------------------------------------
    async def health(self, _request: HTTPRequest) -> Response:
        healthy = self.engine.alive and not self.engine.faults.unhealthy
        return Response(b"", status_code=200 if healthy else 503)

    async def version(self, _request: HTTPRequest) -> Response:
        return JSONResponse({"version": SIM_VERSION})

    async def models(self, _request: HTTPRequest) -> Response:
        created = int(time.time())
        cards: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [],
            }
            for name in self.config.served_model_names
        ]
        return JSONResponse({"object": "list", "data": cards})

    async def prometheus(self, _request: HTTPRequest) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def reset_prefix_cache(self, _request: HTTPRequest) -> Response:
        self.engine.kv.reset_prefix_cache()
        return Response(b"", status_code=200)

    # -- admin routes ------------------------------------------------------------------------
    async def sim_requests(self, request: HTTPRequest) -> Response:
        if request.method == "DELETE":
            self.recorder.clear()
            return Response(b"", status_code=204)
        limit = request.query_params.get("limit")
        entries = self.recorder.list(
            request.query_params.get("x_request_id"), int(limit) if limit else None
        )
        return JSONResponse({"requests": entries})

    async def sim_faults(self, request: HTTPRequest) -> Response:
        if request.method == "DELETE":
            self.engine.set_faults(self.config.faults)
        elif request.method == "POST":
            try:
                changes = json.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ConfigError("the body must be a JSON object of fault fields")
                known = {f.name for f in fields(FaultConfig)}
                unknown = sorted(set(changes) - known)
                if unknown:
                    raise ConfigError(f"unknown fault fields {unknown}; known: {sorted(known)}")
                self.engine.set_faults(replace(self.engine.faults, **changes))
            except (ValueError, TypeError) as exc:
                return _error(str(exc), 400)
        return JSONResponse(asdict(self.engine.faults))

    async def sim_state(self, _request: HTTPRequest) -> Response:
        state = self.engine.snapshot()
        state["side_channel_port"] = self.side_channel.port
        state["engine_id"] = self.config.kv_transfer.engine_id
        state["model_spec"] = self.timer.model.name
        state["gpu"] = self.timer.gpu.name
        return JSONResponse(state)

    # -- completions -------------------------------------------------------------------------
    async def completions(self, request: HTTPRequest) -> Response:
        return await self._complete(request, chat=False)

    async def chat_completions(self, request: HTTPRequest) -> Response:
        return await self._complete(request, chat=True)

    async def _complete(self, http: HTTPRequest, chat: bool) -> Response:
        raw = await http.body()
        entry = self.recorder.start(http.method, http.url.path, dict(http.headers), raw)
        outcome: dict[str, Any] = entry["outcome"]
        faults = self.engine.faults
        if faults.error_rate and random.random() < faults.error_rate:
            outcome["status"] = faults.error_status
            outcome["injected"] = "error"
            return _error("simulated failure (fault injection)", faults.error_status)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            outcome["status"] = 400
            return _error(f"the request body is not valid JSON: {exc}", 400)
        try:
            parsed = protocol.parse_request(
                body,
                chat,
                self.config.served_model_names,
                self.max_model_len,
                self.config.default_max_tokens,
            )
        except protocol.BadRequest as exc:
            outcome["status"] = exc.status
            return _error(str(exc), exc.status, exc.param)
        if faults.extra_latency_s:
            await asyncio.sleep(faults.extra_latency_s)
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
        outcome.update(request_id=response_id, prompt_tokens=len(parsed.prompt_ids))
        if parsed.remote_invalid:
            outcome["remote_invalid"] = parsed.remote_invalid
            log.warning("%s: %s; prefilling locally", response_id, parsed.remote_invalid)
        if not self.engine.alive:
            outcome["status"] = 503
            return _error("the engine is not running", 503)
        try:
            self.engine.submit(req)
        except CapacityError as exc:
            outcome["status"] = 400
            return _error(str(exc), 400, "prompt")
        die_at = -1
        if faults.die_after_tokens >= 0 and random.random() < faults.die_rate:
            die_at = faults.die_after_tokens
        headers = {"x-request-id": base}
        if parsed.stream:
            stream = self._stream(req, parsed, response_id, outcome, die_at, faults.die_mode)
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
        try:
            text: list[str] = []
            while True:
                if len(text) == die_at:
                    self.engine.abort(req)
                    outcome["injected"] = "died"
                    if faults.die_mode == "error":
                        outcome["status"] = 500
                        return _error(ENGINE_DIED, 500)
                    if faults.die_mode == "exit":
                        _die("exit")
                    return _DyingResponse()  # type: ignore[return-value]
                try:
                    event = await asyncio.wait_for(req.events.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if await http.is_disconnected():
                        outcome["status"] = 499  # nginx's "client closed request"
                        return Response(b"", status_code=499)  # nobody reads it; frees blocks
                    continue
                if isinstance(event, TokenEvent):
                    text.append(event.text)
                elif isinstance(event, FinishEvent):
                    break
                else:
                    outcome["status"] = event.status
                    return _error(event.message, event.status)
        finally:
            self.engine.abort(req)  # no-op once finished; frees blocks if the client left
        self._record_done(req, outcome, len(text))
        kv_params = self._kv_transfer_params(req)
        outcome["kv_transfer_params"] = kv_params
        usage = protocol.usage(len(parsed.prompt_ids), len(text), req.cached_tokens)
        body_out = protocol.response_body(
            parsed, response_id, "".join(text), req.finish_reason, usage, kv_params
        )
        return JSONResponse(body_out, headers=headers)

    async def _stream(
        self,
        req: Request,
        parsed: protocol.ParsedRequest,
        response_id: str,
        outcome: dict[str, Any],
        die_at: int,
        die_mode: str,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        sent = 0
        try:
            if parsed.chat:
                yield _sse(protocol.chunk_body(parsed, response_id, created, "", None, first=True))
            while True:
                if sent == die_at:
                    outcome["injected"] = "died"
                    self.engine.abort(req)
                    if die_mode == "error":
                        outcome["status"] = 500
                        yield _sse(protocol.error_body(ENGINE_DIED, 500))
                        yield "data: [DONE]\n\n"
                        return
                    _die(die_mode)
                event: Event = await req.events.get()
                if isinstance(event, ErrorEvent):
                    outcome["status"] = event.status
                    yield _sse(protocol.error_body(event.message, event.status))
                    yield "data: [DONE]\n\n"
                    return
                if isinstance(event, FinishEvent):
                    break  # only after an empty stream; normally consumed below
                finish = None
                if not req.events.empty():
                    nxt = req.events.get_nowait()
                    if isinstance(nxt, FinishEvent):
                        finish = nxt.reason
                sent += 1
                yield _sse(protocol.chunk_body(parsed, response_id, created, event.text, finish))
                if finish is not None:
                    break
            self._record_done(req, outcome, sent)
            if parsed.include_usage:
                usage = protocol.usage(len(parsed.prompt_ids), sent, req.cached_tokens)
                yield _sse(protocol.usage_chunk(parsed, response_id, created, usage))
            yield "data: [DONE]\n\n"
        finally:
            self.engine.abort(req)

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

    def _kv_transfer_params(self, req: Request) -> dict[str, Any] | None:
        if not req.hold_for_remote_decode or req.request_id not in self.engine.held:
            return None
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": [list(req.blocks)],
            "remote_engine_id": self.config.kv_transfer.engine_id,
            "remote_request_id": req.request_id,
            "remote_host": self.config.side_channel_host,
            "remote_port": self.side_channel.port,
            "tp_size": self.config.tensor_parallel_size,
        }


def create_app(config: SimConfig) -> Starlette:
    return Simulator(config).app()

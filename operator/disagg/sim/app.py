"""The simulator's HTTP surface: vLLM's OpenAI server routes plus ``/sim/*`` admin routes.

:class:`Simulator` wires one engine, its side channel, metrics and request recorder together
and owns the process lifecycle; the completion routes are :mod:`disagg.sim.serving`.  The admin
routes change only what a test needs to steer (faults) or read (requests, state), never the
engine's configuration, so a simulator under test stays the worker its command line describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, fields, replace
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from disagg.modeltokenizer import ModelTokenizer, TokenizerError
from disagg.sim.config import ConfigError, FaultConfig, SimConfig
from disagg.sim.engine import Engine
from disagg.sim.kvpublisher import KVEventPublisher, describe
from disagg.sim.metrics import SimMetrics
from disagg.sim.recorder import Recorder
from disagg.sim.serving import CompletionService, error_response
from disagg.sim.sidechannel import NixlAgent, SideChannelServer
from disagg.sim.timing import StepTimer

log = logging.getLogger("disagg.sim.app")
SIM_VERSION = "0.11.0+disagg.sim"


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
            config.calibration,
            eager=config.enforce_eager,
            link=config.link,
        )
        self.metrics = SimMetrics(config.served_model_names[0])
        self.engines: list[Engine] = []
        self.side_channels: list[SideChannelServer] = []
        base_port = 5600 if config.side_channel_port is None else config.side_channel_port
        for rank in range(config.data_parallel_size):
            engine = Engine(config, self.timer, self.metrics.for_engine(str(rank)), rank)
            agent = NixlAgent(config.handshake_timeout_s)
            engine.loads.puller, engine.loads.heartbeat = agent.read, agent.heartbeat
            engine.on_death = self._engine_died
            self.engines.append(engine)
            self.side_channels.append(
                SideChannelServer(
                    engine,
                    config.side_channel_host,
                    base_port + rank if base_port else 0,  # vLLM: base port + DP rank
                    config.side_channel_port_explicit,
                )
            )
        self.engine = self.engines[0]
        self.recorder = Recorder(config.record_limit)
        capacity = self.engine.kv.num_blocks * config.block_size
        if config.max_model_len is not None and config.max_model_len > capacity:
            raise ConfigError(  # vLLM refuses to start in this case too
                f"--max-model-len {config.max_model_len} is larger than the {capacity} tokens "
                f"the KV cache holds ({self.engine.kv.num_blocks} blocks of {config.block_size}); "
                "lower it or raise --gpu-memory-utilization / --num-gpu-blocks-override"
            )
        self.max_model_len = config.max_model_len or min(131_072, capacity)
        self.service = CompletionService(config, self.engines, self.recorder, self.max_model_len)
        try:
            self.service.model_tokenizer = ModelTokenizer.find(config.tokenizer, config.model)
        except TokenizerError as exc:
            raise ConfigError(str(exc)) from None
        if config.tokenizer and self.service.model_tokenizer is None:
            raise ConfigError(f"--tokenizer {config.tokenizer}: no tokenizer.json there")
        self.publishers: list[KVEventPublisher] = []

    # -- lifecycle -------------------------------------------------------------------------
    def _engine_died(self, reason: str) -> None:
        """vLLM's server shuts itself down once its engine is dead (unless
        ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH``); the pod then restarts.  The short delay lets the
        failed requests' answers leave first."""
        if self.config.exit_on_engine_death:
            log.error("engine dead (%s): shutting the server down", reason)
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        for side_channel, engine in zip(self.side_channels, self.engines, strict=True):
            await side_channel.start()
            if self.config.kv_events.publishing:
                publisher = KVEventPublisher(self.config.kv_events, engine.rank)
                self.publishers.append(publisher)
                engine.publish_events = publisher.publish
            engine.start()
        log.info(
            "simulating %s (%s on %s, tp=%d, dp=%d), %d KV blocks of %d tokens, speed-up %g",
            self.config.model,
            self.timer.model.name,
            self.timer.gpu.name,
            self.config.tensor_parallel_size,
            self.config.data_parallel_size,
            self.engine.kv.num_blocks,
            self.config.block_size,
            self.config.speedup,
        )
        # Everything built so far (modules, routes, the engines) lives as long as the process:
        # out of the collector's sight, a full collection under load no longer walks it and
        # stalls every stream for milliseconds (a tail in the ITL the real engine lacks).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            for side_channel, engine in zip(self.side_channels, self.engines, strict=True):
                await engine.stop()
                await side_channel.stop()
            for publisher in self.publishers:
                publisher.close()

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
        healthy = all(e.alive for e in self.engines) and not self.engine.faults.unhealthy
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
        for engine in self.engines:
            engine.kv.reset_prefix_cache()
            engine.flush_events()
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
            self._set_faults(self.config.faults)
        elif request.method == "POST":
            try:
                changes = json.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ConfigError("the body must be a JSON object of fault fields")
                known = {f.name for f in fields(FaultConfig)}
                unknown = sorted(set(changes) - known)
                if unknown:
                    raise ConfigError(f"unknown fault fields {unknown}; known: {sorted(known)}")
                self._set_faults(replace(self.engine.faults, **changes))
            except (ValueError, TypeError) as exc:
                return error_response(str(exc), 400)
        return JSONResponse(asdict(self.engine.faults))

    def _set_faults(self, faults: FaultConfig) -> None:
        for engine in self.engines:
            engine.set_faults(faults)

    async def sim_state(self, _request: HTTPRequest) -> Response:
        """Engine 0's state at the top level (the whole story without data parallelism), every
        engine's under ``engines``."""
        engines = []
        for engine in self.engines:
            state = engine.snapshot()
            state.update(
                rank=engine.rank,
                engine_id=engine.engine_id,
                side_channel_port=engine.side_channel_port,
            )
            engines.append(state)
        top = dict(engines[0])
        top.update(
            engines=engines,
            data_parallel_size=len(self.engines),
            model_spec=self.timer.model.name,
            gpu=self.timer.gpu.name,
            kv_events=describe(self.config.kv_events),
            kv_events_published=[p.published for p in self.publishers],
            tokenizer=str(self.service.model_tokenizer.directory)
            if self.service.model_tokenizer
            else None,
        )
        return JSONResponse(top)

    # -- completions -------------------------------------------------------------------------
    async def completions(self, request: HTTPRequest) -> Response:
        return await self.service.handle(request, chat=False)

    async def chat_completions(self, request: HTTPRequest) -> Response:
        return await self.service.handle(request, chat=True)


def create_app(config: SimConfig) -> Starlette:
    return Simulator(config).app()

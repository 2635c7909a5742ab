"""The gateway's HTTP application (Starlette): OpenAI endpoints, health, metrics, auth, errors.

This module only translates between HTTP and the flow: it reads the body (bounded), checks the
API key, validates the request, builds the routing view of it and maps the flow's outcome --
including ``QueueFull`` (429 + ``Retry-After``) and ``BadRequest`` (400) -- to responses.  Every
error body is OpenAI-shaped.  An unexpected exception becomes a 500 that is logged with the
request id; client input is validated before it can reach code that could raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from disagg.gateway.config import GatewayConfig
from disagg.gateway.discovery import Discovery, Role
from disagg.gateway.flow import Flow, FlowSettings, Reply, StreamReply
from disagg.gateway.kvsubscriber import KVEventMetrics
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.pools import Pool, QueueFull
from disagg.gateway.precise import PreciseRouting, event_roles
from disagg.gateway.requests import BadRequest, Kind, error_body, parse_client_request
from disagg.gateway.routing.contracts import RoutingRequest
from disagg.gateway.routing.prompt import block_hashes, prompt_tokens
from disagg.gateway.routing.registry import build_router
from disagg.gateway.telemetry import Telemetry
from disagg.gateway.upstream import UpstreamClient, UpstreamError

log = logging.getLogger(__name__)


def _has_prefill_pool(config: GatewayConfig) -> bool:
    static = config.discovery.static
    kube = config.discovery.kubernetes
    return bool(kube and kube.prefill_selector) or bool(static and static.prefill)


def _error(
    status: int,
    message: str,
    type_: str,
    code: int | str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(message, type_, code, param), status, headers, media_type="application/json"
    )


class Gateway:
    """Everything one gateway process holds: config, client, pools, router, metrics, tasks."""

    def __init__(
        self,
        config: GatewayConfig,
        discovery: Discovery,
        api_key: str | None = None,
        client: UpstreamClient | None = None,
    ) -> None:
        self.config = config
        self.discovery = discovery
        self._api_key = api_key.encode() if api_key else None
        t = config.timeouts
        self.client = client or UpstreamClient(
            t.connect_seconds, t.stream_idle_seconds, t.keep_alive_expiry_seconds
        )
        self.metrics = GatewayMetrics()
        q = config.queue
        self.pools: dict[Role, Pool] = {
            "prefill": Pool(
                config.pools.prefill, "prefill", q.prefill, q.max_wait_seconds, self.metrics
            ),
            "decode": Pool(
                config.pools.decode, "decode", q.decode, q.max_wait_seconds, self.metrics
            ),
        }
        self.router = build_router(config)
        r = config.retries
        self.flow = Flow(
            self.client,
            self.router,
            self.pools["prefill"],
            self.pools["decode"],
            self.metrics,
            FlowSettings(
                r.prefill_attempts,
                r.decode_attempts,
                r.decode_local_fallback,
                t.prefill_seconds,
                t.first_byte_seconds,
                prefill_pool=_has_prefill_pool(config),
            ),
        )
        self.telemetry = Telemetry(
            self.client, list(self.pools.values()), config.scrape_interval_seconds
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.precise: PreciseRouting | None = None
        """Precise prefix routing (tokenizer, hasher, KV-event feed), when configured."""
        if config.routing.kv_events is not None and self.router.kv_index is not None:
            metrics = KVEventMetrics(self.metrics.registry)
            self.precise = PreciseRouting(config.routing, self.router.kv_index, metrics)
        self._event_roles = event_roles(config)

    def on_discovery(self, role: Role, urls: list[str]) -> None:
        removed = self.pools[role].sync(urls)
        if removed:
            log.info("%s pool: removed %s", role, ", ".join(removed))
        self.router.retain(self.pools["prefill"].urls(), self.pools["decode"].urls())
        if self.precise is not None:
            roles = [r for r in self.pools if r in self._event_roles]
            self.precise.sync({url: r for r in roles for url in self.pools[r].urls()})

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._tasks = [
            asyncio.create_task(self.discovery.run(self.on_discovery), name="discovery"),
            asyncio.create_task(self.telemetry.run(), name="telemetry"),
        ]
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.precise is not None:
                await self.precise.close()
            await self.client.aclose()

    # -- handlers -----------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        if self._api_key is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._api_key
        )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(
                f"request body is {declared} bytes; the limit is {limit}", None, "request_too_large"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(
                    f"request body exceeds the limit of {limit} bytes", None, "request_too_large"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completions")

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    async def _serve(self, request: Request, kind: Kind) -> Response:
        arrival = time.monotonic()
        request_id = f"disagg-{uuid.uuid4().hex}"
        response = await self._respond(request, kind, request_id, arrival)
        response.headers.setdefault("X-Request-Id", request_id)
        self.metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    async def _respond(
        self, request: Request, kind: Kind, request_id: str, arrival: float
    ) -> Response:
        if not self._authorized(request):
            return _error(
                401, "invalid or missing API key", "authentication_error", "invalid_api_key"
            )
        try:
            raw = await self._read_body(request)
            client_request = parse_client_request(raw, kind, self.config.max_body_bytes)
            tokens = prompt_tokens(client_request.body)
            block_size = self.config.routing.block_size
            keys, exact = (
                self.precise.engine_blocks(client_request.body) if self.precise else ((), 0)
            )
            routing = RoutingRequest(
                request_id, len(tokens), block_hashes(tokens, block_size), block_size, keys, exact
            )
            outcome = await self.flow.handle(client_request, routing, arrival)
        except BadRequest as exc:
            return _error(400, exc.message, "invalid_request_error", exc.code, exc.param)
        except QueueFull as exc:
            retry = str(self.config.queue.retry_after_seconds)
            return _error(
                429,
                f"the gateway is at capacity ({exc}); retry later",
                "rate_limit_error",
                "queue_full",
                headers={"Retry-After": retry},
            )
        except Exception:  # never leak a traceback to the client; log it with the id
            log.exception("request %s failed inside the gateway", request_id)
            return _error(
                500, f"internal gateway error (request {request_id})", "internal_error", 500
            )
        if isinstance(outcome, StreamReply):
            return StreamingResponse(
                outcome.chunks, 200, outcome.headers, media_type=outcome.content_type
            )
        return self._plain(outcome)

    @staticmethod
    def _plain(reply: Reply) -> Response:
        return Response(reply.body, reply.status, reply.headers, media_type=reply.content_type)

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(
                401, "invalid or missing API key", "authentication_error", "invalid_api_key"
            )
        endpoints = sorted(self.pools["decode"].endpoints(), key=lambda e: not e.healthy)
        for endpoint in endpoints:
            try:
                answer = await self.client.get(endpoint.url + "/v1/models", 5.0)
            except UpstreamError:
                continue
            if answer.status == 200:
                return Response(answer.body, 200, media_type="application/json")
        return _error(503, "no decode worker answered /v1/models", "upstream_error", 503)

    async def health(self, request: Request) -> Response:
        return Response(b"", 200)

    async def ready(self, request: Request) -> Response:
        """Ready once at least one decode worker is known (prefill is optional: fallback)."""
        ready = bool(self.pools["decode"].workers)
        return Response(b"" if ready else b"no decode workers\n", 200 if ready else 503)

    async def kv_index_state(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(
                401, "invalid or missing API key", "authentication_error", "invalid_api_key"
            )
        if self.precise is None:
            return _error(404, "KV events are off (routing.kvEvents)", "not_found", 404)
        return JSONResponse(self.precise.describe())

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), 200, media_type=CONTENT_TYPE_LATEST)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/ready", self.ready, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                Route("/debug/kv-index", self.kv_index_state, methods=["GET"]),
            ],
            lifespan=self.lifespan,
        )

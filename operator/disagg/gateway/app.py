"""The gateway's HTTP application (Starlette): OpenAI endpoints, health, metrics, auth, errors.

This module only translates between HTTP and the flow: it reads the body (bounded in size and
time), checks the API key, validates the request, builds the request's context and maps the
flow's outcome -- including ``QueueFull`` (429 + ``Retry-After``) and ``BadRequest`` (400) -- to
responses.  Every response of the API routes carries the request id and its route headers, and
every error body is OpenAI-shaped, unknown paths included.

A client that goes away is its own outcome, not an error of ours: mid-body, or while its request
is being served, the work is cancelled (so workers abort it too), the request is counted with
status 499 (nginx's "client closed request") and logged at INFO, without a traceback.  An
unexpected exception becomes a 500 logged with the request id; client input is validated before
it can reach code that could raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HTTPRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from disagg.gateway.admission import ticket_for
from disagg.gateway.config import GatewayConfig, PoolQueueConfig
from disagg.gateway.context import RequestContext, Route
from disagg.gateway.decode import DecodeLeg, DecodeSettings
from disagg.gateway.discovery import Discovery, Role, WorkerInfo
from disagg.gateway.flow import Flow, FlowSettings
from disagg.gateway.handoff import HandoffRules
from disagg.gateway.kvsubscriber import KVEventMetrics
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.pools import Pool, QueueFull
from disagg.gateway.precise import PreciseRouting, event_roles
from disagg.gateway.prefill import PrefillLeg, PrefillSettings
from disagg.gateway.replies import JSON, ClientGone, Reply, StreamReply
from disagg.gateway.requests import BadRequest, Kind, error_body, parse_client_request
from disagg.gateway.routing.contracts import RoutingRequest
from disagg.gateway.routing.prompt import prompt_blocks
from disagg.gateway.routing.registry import build_router
from disagg.gateway.telemetry import Telemetry
from disagg.gateway.upstream import UpstreamClient, UpstreamError

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499


Outcome = Reply | StreamReply


def refusal(
    status: int,
    message: str,
    type_: str,
    code: int | str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An OpenAI-shaped error answer."""
    return Reply(status, error_body(message, type_, code, param), JSON, headers or {})


def unauthorized() -> Reply:
    return refusal(401, "invalid or missing API key", "authentication_error", "invalid_api_key")


async def discard(outcome: Outcome) -> None:
    """Drop an answer nobody will read: a stream's worker connection is closed, its slot freed."""
    if not isinstance(outcome, StreamReply):
        return
    if outcome.source is not None:  # never iterated: the relay's end is run here
        outcome.source.relay.finish()
        outcome.source.stream.release()
        return
    await _close(outcome.chunks)


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await close()


def _has_prefill_pool(config: GatewayConfig) -> bool:
    static = config.discovery.static
    kube = config.discovery.kubernetes
    return bool(kube and kube.prefill_selector) or bool(static and static.prefill)


class RelayResponse(StreamingResponse):
    """A stream relayed to the client, with one plain asyncio task watching for its departure.

    Starlette's ``StreamingResponse`` runs the stream and a disconnect listener in an anyio task
    group -- a cancel scope, tasks and a weak set per response, which the profile showed.  Here
    the listener cancels the sending task when the client goes away; the relay's generator is
    then closed, so the decode worker's connection is dropped and the slot released, as before.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.Event()

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            task.cancel()

        listener = asyncio.ensure_future(listen())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            task.uncancel()
        finally:
            listener.cancel()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


class Gateway:
    """Everything one gateway process holds: config, client, pools, legs, metrics, tasks."""

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
        t, kv = config.timeouts, config.kv_transfer
        self.client = client or UpstreamClient(
            t.connect_seconds, t.stream_idle_seconds, t.keep_alive_expiry_seconds
        )
        self.metrics = GatewayMetrics()
        q = config.queue
        sides: tuple[tuple[Role, str, PoolQueueConfig], ...] = (
            ("prefill", config.pools.prefill, q.prefill),
            ("decode", config.pools.decode, q.decode),
        )
        self.pools: dict[Role, Pool] = {
            role: Pool(name, role, limits, q.max_wait_seconds, self.metrics, q.gateway_replicas)
            for role, name, limits in sides
        }
        self.router = build_router(config)
        rules = HandoffRules(config.routing.block_size, kv.side_channel_port, kv.data_parallel_size)
        r = config.retries
        prefill = PrefillLeg(
            self.client,
            self.router,
            self.pools["prefill"],
            self.metrics,
            PrefillSettings(r.prefill_attempts, t.prefill_seconds, rules),
        )
        decode = DecodeLeg(
            self.client,
            self.router,
            self.pools["decode"],
            self.metrics,
            DecodeSettings(r.decode_attempts, t.first_byte_seconds, kv.handoff_budget),
        )
        self.flow = Flow(
            self.router,
            self.pools["prefill"],
            self.pools["decode"],
            prefill,
            decode,
            self.metrics,
            FlowSettings(r.decode_local_fallback, prefill_pool=_has_prefill_pool(config)),
        )
        self.telemetry = Telemetry(
            self.client, list(self.pools.values()), config.scrape_interval_seconds
        )
        self.draining = False
        """Set on SIGTERM: ``/ready`` fails so that load balancers stop sending here."""
        self._tasks: list[asyncio.Task[None]] = []
        self.precise: PreciseRouting | None = None
        """Precise prefix routing (tokenizer, hasher, KV-event feed), when configured."""
        if config.routing.kv_events is not None and self.router.kv_index is not None:
            metrics = KVEventMetrics(self.metrics.registry)
            self.precise = PreciseRouting(config.routing, self.router.kv_index, metrics)
        self._event_roles = event_roles(config)

    def on_discovery(self, role: Role, workers: list[WorkerInfo]) -> None:
        removed = self.pools[role].sync(workers)
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
    def authorized(self, headers: Mapping[str, str]) -> bool:
        """``headers``: a mapping that finds the lower-case name."""
        if self._api_key is None:
            return True
        header = headers.get("authorization", "")
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
        try:
            async with asyncio.timeout(self.config.timeouts.body_read_seconds):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise BadRequest(
                            f"request body exceeds the limit of {limit} bytes",
                            None,
                            "request_too_large",
                        )
                    chunks.append(chunk)
        except ClientDisconnect:
            raise ClientGone from None
        return b"".join(chunks)

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completions")

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    async def _serve(self, request: Request, kind: Kind) -> Response:
        """The completion routes as ASGI (``front`` serves them on the wire in production)."""
        route = Route(f"disagg-{os.urandom(16).hex()}")
        outcome = await self.answer(
            kind,
            route,
            request.headers,
            lambda: self._read_body(request),
            lambda work: self._until_disconnect(request, work),
        )
        response: Response
        if isinstance(outcome, StreamReply):
            response = RelayResponse(outcome.chunks, 200, media_type=outcome.content_type)
        else:
            response = self._plain(outcome)
        raw = response.raw_headers  # appended to directly: MutableHeaders rescans per call
        present = {name for name, _ in raw}
        for name, value in route.headers().items():
            key = name.lower().encode("latin-1")
            if key not in present:
                raw.append((key, value.encode("latin-1")))
        self.metrics.requests.labels(request.scope["path"], str(response.status_code)).inc()
        return response

    async def answer(
        self,
        kind: Kind,
        route: Route,
        headers: Mapping[str, str],
        read_body: Callable[[], Awaitable[bytes]],
        until_gone: Callable[[Coroutine[Any, Any, Outcome]], Awaitable[Outcome]],
    ) -> Outcome:
        """One completion request, whatever server carries it: ``read_body`` reads the body
        (raising ``BadRequest``, ``TimeoutError`` or ``ClientGone``), ``until_gone`` runs the
        flow until the client disconnects (then raises ``ClientGone``).  Every failure becomes
        a ``Reply``: OpenAI-shaped, 4xx for the client's mistakes, 499 if it left."""
        if not self.authorized(headers):
            return unauthorized()
        arrival = time.monotonic()
        try:
            raw = await read_body()
            client_request = parse_client_request(
                raw, kind, self.config.max_body_bytes, self.config.model.vocab_size
            )
            block_size = self.config.routing.block_size
            tokens, hashes = prompt_blocks(client_request.body, block_size)
            keys, exact = (
                self.precise.engine_blocks(client_request.body) if self.precise else ((), 0)
            )
            routing = RoutingRequest(route.request_id, tokens, hashes, block_size, keys, exact)
            ticket = ticket_for(headers, client_request.body, tokens)
            ctx = RequestContext(client_request, routing, route, arrival, ticket=ticket)
            return await until_gone(self.flow.handle(ctx))
        except BadRequest as exc:
            close = {"Connection": "close"} if exc.code == "request_too_large" else {}
            return refusal(400, exc.message, "invalid_request_error", exc.code, exc.param, close)
        except TimeoutError:
            seconds = self.config.timeouts.body_read_seconds
            return refusal(
                408,
                f"the request body did not arrive within {seconds:g}s",
                "invalid_request_error",
                "request_timeout",
                headers={"Connection": "close"},  # the rest of the body may still come
            )
        except ClientGone:
            log.info("request %s: the client went away before its answer", route.request_id)
            return Reply(CLIENT_CLOSED, b"")  # nobody reads it; it is counted as 499
        except QueueFull as exc:
            retry = str(max(self.config.queue.retry_after_seconds, exc.retry_after))
            return refusal(
                429,
                f"the gateway is at capacity ({exc}); retry later",
                "rate_limit_error",
                "queue_full",
                headers={"Retry-After": retry},
            )
        except Exception:  # never leak a traceback to the client; log it with the id
            log.exception("request %s failed inside the gateway", route.request_id)
            return refusal(
                500, f"internal gateway error (request {route.request_id})", "internal_error", 500
            )

    async def _until_disconnect(
        self, request: Request, work: Coroutine[Any, Any, Outcome]
    ) -> Outcome:
        """Run the flow in this task; if the client disconnects meanwhile, a listener cancels it
        (``ClientGone``).  The body is read, so the next ASGI message can only be
        ``http.disconnect``.  The listener runs only while this task waits, so its cancel always
        lands inside ``work`` (one task per request, not two plus a wait)."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def listen() -> None:
            nonlocal gone
            await request.receive()
            gone = True
            task.cancel()

        listener = asyncio.ensure_future(listen())
        try:
            outcome = await work
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            raise ClientGone from None
        finally:
            listener.cancel()
        if gone:  # answered just as the client left (a cancel that came too late to land)
            await discard(outcome)
            raise ClientGone
        return outcome

    @staticmethod
    def _plain(reply: Reply) -> Response:
        return Response(reply.body, reply.status, reply.headers, media_type=reply.content_type)

    async def models(self, request: Request) -> Response:
        if not self.authorized(request.headers):
            return self._plain(unauthorized())
        endpoints = sorted(self.pools["decode"].endpoints(), key=lambda e: not e.healthy)
        for endpoint in endpoints:
            try:
                answer = await self.client.get(endpoint.url + "/v1/models", 5.0)
            except UpstreamError:
                continue
            if answer.status == 200:
                return Response(answer.body, 200, media_type="application/json")
        return self._plain(
            refusal(503, "no decode worker answered /v1/models", "upstream_error", 503)
        )

    async def health(self, request: Request) -> Response:
        return Response(b"", 200)

    async def ready(self, request: Request) -> Response:
        """Ready once a decode worker is known (prefill is optional), until shutdown starts."""
        if self.draining:
            return Response(b"shutting down\n", 503)
        ready = bool(self.pools["decode"].workers)
        return Response(b"" if ready else b"no decode workers\n", 200 if ready else 503)

    async def kv_index_state(self, request: Request) -> Response:
        if not self.authorized(request.headers):
            return self._plain(unauthorized())
        if self.precise is None:
            return self._plain(
                refusal(404, "KV events are off (routing.kvEvents)", "not_found", 404)
            )
        return JSONResponse(self.precise.describe())

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), 200, media_type=CONTENT_TYPE_LATEST)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Unknown paths and methods: OpenAI-shaped too."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        route = Route(f"disagg-{uuid.uuid4().hex}")
        message = f"{detail}: {request.method} {request.url.path}"
        return self._plain(
            refusal(status, message, "invalid_request_error", status, headers=route.headers())
        )

    def app(self) -> ASGIApp:
        """Every route as ASGI.  ``server`` serves the two completion routes itself (``front``)
        and hands everything else to this app."""
        return self._starlette()

    def _starlette(self) -> Starlette:
        return Starlette(
            routes=[
                HTTPRoute("/v1/completions", self.completions, methods=["POST"]),
                HTTPRoute("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                HTTPRoute("/v1/models", self.models, methods=["GET"]),
                HTTPRoute("/health", self.health, methods=["GET"]),
                HTTPRoute("/ready", self.ready, methods=["GET"]),
                HTTPRoute("/metrics", self.metrics_endpoint, methods=["GET"]),
                HTTPRoute("/debug/kv-index", self.kv_index_state, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self.http_error},
            lifespan=self.lifespan,
        )

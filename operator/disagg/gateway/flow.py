"""One client request through the pools: plan, prefill leg, decode leg, fallbacks, relay.

The order of operations (VLLM.md's NIXL protocol):

1. the router picks a decode worker and decides disaggregated vs decode-only;
2. disaggregated: the prefill leg goes to a prefill worker; on a failure (connection, timeout,
   5xx, no ``kv_transfer_params``) another prefill worker is tried, and after
   ``prefill_attempts`` the decode worker gets the original body and prefills locally
   (decision ``fallback``).  A 4xx from prefill is the client's problem and is returned as is;
3. the decode leg: the original body (+ the prefill's ``kv_transfer_params``).  A worker that
   fails before its first body byte is replaced by another; once bytes reached the client the
   stream can only end with an SSE error frame and ``[DONE]`` -- never silently truncated.

Streams are relayed by ``relay`` as the worker's bytes; nothing is re-serialised.
The flow returns a ``Reply`` or a ``StreamReply``; the app turns them into HTTP responses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.pools import Pool
from disagg.gateway.relay import RelayTiming, relay_stream
from disagg.gateway.requests import ClientRequest, decode_body, encode, error_body, prefill_body
from disagg.gateway.routing.contracts import NoEndpointError, RoutingRequest
from disagg.gateway.routing.disagg import DisaggRouter
from disagg.gateway.upstream import Stream, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

JSON = "application/json"


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamReply:
    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FlowSettings:
    prefill_attempts: int
    decode_attempts: int
    decode_local_fallback: bool
    prefill_seconds: float
    first_byte_seconds: float
    prefill_pool: bool = True
    """False when the gateway runs without a prefill pool at all (aggregated workers): a
    request without a prefill leg is then ``decode_only``, not a ``fallback``."""


@dataclass
class Route:
    """Where one request went and why: returned to the client as ``X-Disagg-*`` headers and
    logged, so a user (and the demo) can see each request's path without reading metrics."""

    request_id: str
    decision: str
    reason: str
    uncached_tokens: int
    threshold: int
    prefill: str | None = None
    decode: str | None = None

    def explain(self) -> str:
        if self.reason == "uncached_below_threshold":
            return (
                f"{self.uncached_tokens} uncached prompt tokens < "
                f"minUncachedPromptTokens {self.threshold}: decode worker prefills itself"
            )
        if self.reason == "uncached_above_threshold":
            return f"{self.uncached_tokens} uncached prompt tokens >= {self.threshold}"
        if self.decision == "fallback":
            return "prefill unavailable or failed: the decode worker prefilled locally"
        return self.reason.replace("_", " ")

    def headers(self) -> dict[str, str]:
        out = {
            "X-Request-Id": self.request_id,
            "X-Disagg-Route": self.decision,
            "X-Disagg-Route-Reason": self.explain(),
        }
        if self.prefill:
            out["X-Disagg-Prefill-Worker"] = self.prefill
        if self.decode:
            out["X-Disagg-Decode-Worker"] = self.decode
        return out


def upstream_failure(message: str, status: int = 502) -> Reply:
    return Reply(status, error_body(message, "upstream_error", status))


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class Flow:
    def __init__(
        self,
        client: UpstreamClient,
        router: DisaggRouter,
        prefill: Pool,
        decode: Pool,
        metrics: GatewayMetrics,
        settings: FlowSettings,
    ) -> None:
        self.client = client
        self.router = router
        self.prefill = prefill
        self.decode = decode
        self.metrics = metrics
        self.settings = settings

    async def handle(
        self, request: ClientRequest, routing: RoutingRequest, arrival: float
    ) -> Reply | StreamReply:
        """Serve one validated request; raises ``QueueFull`` (429) when a pool is saturated."""
        headers = {"Content-Type": JSON, "X-Request-Id": routing.request_id}
        try:
            plan = self.router.plan(routing, self.prefill.endpoints(), self.decode.endpoints())
        except NoEndpointError:
            return upstream_failure("no decode worker is available", 503)
        decision: str = plan.decision  # selective off = threshold 0: the router decides
        if plan.reason == "no_prefill_endpoint" and self.settings.prefill_pool:
            decision = "fallback"
        route = Route(
            routing.request_id,
            decision,
            plan.reason,
            plan.uncached_tokens,
            self.router.decider.min_uncached_prompt_tokens,
        )
        self.decode.refuse_if_full()  # before a prefill whose blocks nobody would pull
        body = request.body
        if decision == "disaggregated":
            outcome = await self._prefill(request, routing, headers, route)
            if isinstance(outcome, Reply):
                return outcome
            if outcome is None:
                if not self.settings.decode_local_fallback:
                    self.metrics.decisions.labels("fallback").inc()
                    return upstream_failure("prefill failed on every worker tried")
                decision = route.decision = "fallback"
            else:
                body = decode_body(request.body, outcome)
        self.metrics.decisions.labels(decision).inc()
        prefill_done = time.monotonic()
        await self.decode.admit()
        # Each decode method owns the admitted slot: it releases it, or hands it to the relay.
        decode = self._decode_stream if request.stream else self._decode_whole
        reply = await decode(
            request,
            routing,
            encode(body),
            headers,
            plan.decode.url,
            route,
            arrival,
            prefill_done,
        )
        log.info(
            "request %s: %s prefill=%s decode=%s (%s) -> %s",
            route.request_id,
            route.decision,
            route.prefill or "-",
            route.decode or "-",
            route.explain(),
            reply.status if isinstance(reply, Reply) else "stream",
        )
        return reply

    # -- prefill ------------------------------------------------------------------------------
    async def _prefill(
        self,
        request: ClientRequest,
        routing: RoutingRequest,
        headers: Mapping[str, str],
        route: Route,
    ) -> dict[str, Any] | Reply | None:
        """The prefill leg with retries: params on success, a client-error Reply, or None."""
        leg = encode(prefill_body(request.body))
        await self.prefill.admit()
        try:
            tried: set[str] = set()
            for _ in range(self.settings.prefill_attempts):
                endpoint = self.router.pick_prefill(
                    routing, self.prefill.endpoints(), frozenset(tried)
                )
                if endpoint is None:
                    break
                url = endpoint.url
                tried.add(url)
                started = time.monotonic()
                self.prefill.start(url)
                try:
                    answer = await self.client.post(
                        url + request.path, leg, headers, self.settings.prefill_seconds
                    )
                except UpstreamError as exc:
                    self._failed("prefill", self.prefill, url, exc)
                    continue
                finally:
                    self.prefill.finish(url)
                if answer.status != 200:
                    if not _retryable(answer.status):
                        return Reply(answer.status, answer.body, headers=route.headers())
                    error = UpstreamError("status", f"HTTP {answer.status}", answer.status)
                    self._failed("prefill", self.prefill, url, error)
                    continue
                params = _kv_params(answer.body)
                if params is None:
                    log.warning("prefill %s answered without kv_transfer_params", url)
                    self.metrics.upstream_errors.labels("prefill", "protocol").inc()
                    continue
                self.metrics.prefill_time.observe(time.monotonic() - started)
                self.router.record("prefill", routing, url)
                route.prefill = url
                return params
            return None
        finally:
            self.prefill.release()

    def _failed(self, role: str, pool: Pool, url: str, exc: UpstreamError) -> None:
        log.warning("%s worker %s failed (%s): %s", role, url, exc.kind, exc)
        self.metrics.upstream_errors.labels(role, exc.kind).inc()
        if exc.kind in ("connect", "timeout"):
            pool.mark(url, healthy=False)

    # -- decode -------------------------------------------------------------------------------
    def _decode_candidates(
        self, routing: RoutingRequest, first: str, tried: set[str]
    ) -> str | None:
        if not tried and first in self.decode.workers:
            return first
        endpoint = self.router.pick_decode(routing, self.decode.endpoints(), frozenset(tried))
        return None if endpoint is None else endpoint.url

    async def _decode_whole(
        self,
        request: ClientRequest,
        routing: RoutingRequest,
        leg: bytes,
        headers: dict[str, str],
        first: str,
        route: Route,
        arrival: float,
        prefill_done: float,
    ) -> Reply:
        decision = route.decision
        tried: set[str] = set()
        last: Reply = upstream_failure("no decode worker could serve the request")
        try:
            for _ in range(self.settings.decode_attempts):
                url = self._decode_candidates(routing, first, tried)
                if url is None:
                    break
                tried.add(url)
                self.decode.start(url)
                route.decode = url
                try:
                    answer = await self.client.post(
                        url + request.path, leg, headers, self.settings.first_byte_seconds
                    )
                except UpstreamError as exc:
                    self._failed("decode", self.decode, url, exc)
                    continue
                finally:
                    self.decode.finish(url)
                reply = Reply(
                    answer.status,
                    answer.body,
                    answer.headers.get("content-type", JSON),
                    route.headers(),
                )
                if _retryable(answer.status):
                    self.metrics.upstream_errors.labels("decode", "status").inc()
                    last = reply
                    continue
                now = time.monotonic()
                if answer.status == 200:
                    self.router.record("decode", routing, url)
                    self.metrics.ttft.labels(decision).observe(now - arrival)
                    if decision == "disaggregated":
                        self.metrics.kv_handoff_time.observe(now - prefill_done)
                self.metrics.request_duration.labels(decision).observe(now - arrival)
                return reply
            return last
        finally:
            self.decode.release()

    async def _decode_stream(
        self,
        request: ClientRequest,
        routing: RoutingRequest,
        leg: bytes,
        headers: dict[str, str],
        first: str,
        route: Route,
        arrival: float,
        prefill_done: float,
    ) -> Reply | StreamReply:
        decision = route.decision
        tried: set[str] = set()
        last: Reply = upstream_failure("no decode worker could serve the request")
        handed_over = False
        try:
            for _ in range(self.settings.decode_attempts):
                url = self._decode_candidates(routing, first, tried)
                if url is None:
                    break
                tried.add(url)
                route.decode = url
                opened = await self._open_decode_stream(request, route, leg, headers, url)
                if isinstance(opened, Reply):
                    if not _retryable(opened.status):
                        return opened
                    last = opened
                    continue
                if opened is None:
                    continue
                stream, chunks, head = opened
                self.router.record("decode", routing, url)

                def done(url: str = url) -> None:
                    self.decode.finish(url)
                    self.decode.release()

                timing = RelayTiming(decision, arrival, prefill_done)
                relay = relay_stream(stream, chunks, head, url, timing, self.metrics, done)
                handed_over = True
                return StreamReply(relay, headers=route.headers())
            return last
        finally:
            if not handed_over:
                self.decode.release()

    async def _open_decode_stream(
        self,
        request: ClientRequest,
        route: Route,
        leg: bytes,
        headers: dict[str, str],
        url: str,
    ) -> tuple[Stream, AsyncIterator[bytes], bytes] | Reply | None:
        """Open a stream and read its first bytes: the stream, an HTTP error Reply, or None.

        On success the worker stays counted in flight (the relay finishes it).
        """
        self.decode.start(url)
        stream: Stream | None = None
        committed = False
        try:
            stream = await self.client.open_stream(
                url + request.path, leg, headers, self.settings.first_byte_seconds
            )
            if stream.status != 200:
                body = await stream.read()
                if _retryable(stream.status):
                    self.metrics.upstream_errors.labels("decode", "status").inc()
                return Reply(
                    stream.status,
                    body,
                    stream.headers.get("content-type", JSON),
                    route.headers(),
                )
            chunks = stream.chunks()
            head = b""
            while not head:  # the first body byte decides whether we are committed
                head = await chunks.__anext__()
            committed = True
            return stream, chunks, head
        except (UpstreamError, StopAsyncIteration) as exc:
            error = exc if isinstance(exc, UpstreamError) else UpstreamError("protocol", "empty")
            self._failed("decode", self.decode, url, error)
            return None
        finally:
            if not committed:
                if stream is not None:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                self.decode.finish(url)


def _kv_params(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    params = data.get("kv_transfer_params") if isinstance(data, dict) else None
    return params if isinstance(params, dict) else None

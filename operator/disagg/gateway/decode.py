"""The decode leg: send the request to a decode worker and commit to the first one that answers.

An attempt ends in one of three ways.  *Committed*: a whole answer (any status that is not a
worker failure), or a stream whose first output event arrived (``relay.read_until_committed``).
*Unreachable*: the connection failed, so the worker never saw the request; the prefill's
``kv_transfer_params`` are still good for another decode worker that can load them.  *Failed
after the worker saw it*: a 5xx, a timeout, a broken answer, or a stream that ended before any
output -- real vLLM's silent empty stream when it could not load the KV under
``kv_load_failure_policy: fail``.  If the attempt carried ``kv_transfer_params``, the KV load is
presumed failed (the blocks may be gone or pulled): the params are dropped and the request is
retried *decode-only* -- on another decode worker if there is one, else on the same -- and that
retry is granted even when the attempts are used up.  Counted in
``disagg_gateway_kv_handoff_failures_total{reason="load_failed"}`` and visible in the route.

Before every attempt that carries params the hand-off's age is checked against the lease budget:
a decode leg that would start late is served decode-only rather than risk reading blocks the
prefill worker already reused (which answers wrong, silently).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from disagg.gateway.context import RequestContext
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.pools import Pool
from disagg.gateway.relay import (
    RelaySource,
    RelayTiming,
    SSERelay,
    read_until_committed,
    relay_stream,
)
from disagg.gateway.replies import JSON, Reply, StreamReply, retryable, upstream_failure
from disagg.gateway.requests import decode_body, encode
from disagg.gateway.routing.compat import kv_compatible
from disagg.gateway.routing.disagg import DisaggRouter
from disagg.gateway.routing.frozen import fast_init
from disagg.gateway.upstream import Stream, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSettings:
    attempts: int
    first_byte_seconds: float
    handoff_budget_seconds: float


@fast_init
@dataclass(frozen=True)
class Failed:
    """An attempt that did not commit; ``seen``: the worker received the request."""

    seen: bool
    reply: Reply | None = None


@fast_init
@dataclass(frozen=True)
class Opened:
    stream: Stream
    head: bytes


Attempt = Reply | Opened | Failed


class DecodeLeg:
    def __init__(
        self,
        client: UpstreamClient,
        router: DisaggRouter,
        pool: Pool,
        metrics: GatewayMetrics,
        settings: DecodeSettings,
    ) -> None:
        self.client = client
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self.settings = settings
        self._deadline = settings.first_byte_seconds

    async def serve(self, ctx: RequestContext) -> Reply | StreamReply:
        """Run the attempts.  Owns the admitted decode slot: releases it, or hands it to the
        relay with the stream."""
        handed_over = False
        last: Reply | None = None  # the answer of the last failed attempt, if it gave one
        try:
            budget, retried_locally, repeat = self.settings.attempts, False, None
            while budget > 0:
                budget -= 1
                url = self._next_worker(ctx, repeat)
                if url is None:
                    break
                self._check_handoff(ctx, url)
                carried_kv = ctx.kv_params is not None
                outcome = await (self._open if ctx.request.stream else self._whole)(ctx, url)
                if isinstance(outcome, Reply):
                    return outcome
                if isinstance(outcome, Opened):
                    handed_over = True
                    return self._relay(ctx, url, outcome)
                last = outcome.reply or last
                repeat = None
                if outcome.seen and carried_kv:
                    log.warning(
                        "request %s: decode worker %s could not load the prefilled KV; "
                        "retrying with a local prefill",
                        ctx.route.request_id,
                        url,
                    )
                    self.metrics.kv_handoff_failures.labels("load_failed").inc()
                    ctx.drop_kv("load_failed")
                    repeat = url  # a KV-load failure leaves the worker healthy
                    if not retried_locally:
                        retried_locally, budget = True, max(budget, 1)
            return last or upstream_failure("no decode worker could serve the request")
        finally:
            if not handed_over:
                self.pool.release(ctx.ticket)

    def _next_worker(self, ctx: RequestContext, repeat: str | None) -> str | None:
        target = ctx.decode_target
        if not ctx.tried_decode and target is not None and target.url in self.pool.workers:
            url: str | None = target.url
        else:
            picked = self.router.pick_decode(
                ctx.routing, self.pool.endpoints(), frozenset(ctx.tried_decode)
            )
            url = picked.url if picked is not None else repeat
        if url is not None:
            ctx.tried_decode.add(url)
        return url

    def _check_handoff(self, ctx: RequestContext, url: str) -> None:
        """Keep the params only if this worker can load them, and in time."""
        if ctx.kv_params is None:
            return
        worker = self.pool.workers.get(url)
        prefill = ctx.prefill_endpoint
        if (
            worker is not None
            and prefill is not None
            and not kv_compatible(prefill, worker.endpoint())
        ):
            ctx.drop_kv("no_compatible_prefill")
        elif ctx.handoff_age() > self.settings.handoff_budget_seconds:
            log.warning(
                "request %s: decode leg would start %.1fs after the prefill answered (budget "
                "%.1fs): serving it decode-only", ctx.route.request_id, ctx.handoff_age(),
                self.settings.handoff_budget_seconds,
            )  # fmt: skip
            self.metrics.kv_handoff_failures.labels("lease_budget").inc()
            ctx.drop_kv("lease_budget")

    def _leg(self, ctx: RequestContext) -> bytes:
        body = ctx.request.body
        return encode(decode_body(body, ctx.kv_params) if ctx.kv_params is not None else body)

    def _failed(self, url: str, exc: UpstreamError) -> Failed:
        log.warning("decode worker %s failed (%s): %s", url, exc.kind, exc)
        self.metrics.upstream_errors.labels("decode", exc.kind).inc()
        if exc.kind in ("connect", "timeout"):
            self.pool.mark(url, healthy=False)
        return Failed(seen=exc.kind != "connect")

    async def _whole(self, ctx: RequestContext, url: str) -> Attempt:
        self.pool.start(url)
        ctx.route.decode = url
        try:
            answer = await self.client.post(
                url + ctx.request.path,
                self._leg(ctx),
                ctx.headers,
                self.settings.first_byte_seconds,
            )
        except UpstreamError as exc:
            return self._failed(url, exc)
        finally:
            self.pool.finish(url)
        reply = Reply(answer.status, answer.body, answer.headers.get("content-type", JSON))
        if retryable(answer.status):
            self.metrics.upstream_errors.labels("decode", "status").inc()
            return Failed(seen=True, reply=reply)
        now = time.monotonic()
        if answer.status == 200:
            self.router.record("decode", ctx.routing, url)
            self.metrics.ttft.labels(ctx.route.decision).observe(now - ctx.arrival)
            if ctx.kv_params is not None and ctx.prefill_done is not None:
                self.metrics.kv_handoff_time.observe(now - ctx.prefill_done)
        self.metrics.request_duration.labels(ctx.route.decision).observe(now - ctx.arrival)
        return reply

    async def _open(self, ctx: RequestContext, url: str) -> Attempt:
        """Open a stream and read until its first output; on success the worker stays counted
        in flight (the relay finishes it)."""
        self.pool.start(url)
        ctx.route.decode = url
        stream: Stream | None = None
        committed = False
        try:
            stream = await self.client.open_stream(
                url + ctx.request.path,
                self._leg(ctx),
                ctx.headers,
                self.settings.first_byte_seconds,
            )
            if stream.status != 200:
                body = await stream.read()
                reply = Reply(stream.status, body, stream.headers.get("content-type", JSON))
                if retryable(stream.status):
                    self.metrics.upstream_errors.labels("decode", "status").inc()
                    return Failed(seen=True, reply=reply)
                return reply
            head, failure = await read_until_committed(stream)
            if failure is not None:
                log.warning("decode worker %s ended its stream with no output (%s)", url, failure)
                self.metrics.upstream_errors.labels("decode", "empty").inc()
                return Failed(seen=True)
            committed = True
            return Opened(stream, head)
        except UpstreamError as exc:
            return self._failed(url, exc)
        finally:
            if not committed:
                if stream is not None:
                    stream.release()
                self.pool.finish(url)

    def _relay(self, ctx: RequestContext, url: str, opened: Opened) -> StreamReply:
        self.router.record("decode", ctx.routing, url)

        def done() -> None:
            self.pool.finish(url)
            self.pool.release(ctx.ticket)

        handoff_start = ctx.prefill_done if ctx.kv_params is not None else None
        timing = RelayTiming(ctx.route.decision, ctx.arrival, handoff_start)
        relay = SSERelay(url, timing, self.metrics, done)
        source = RelaySource(opened.stream, opened.head, relay)
        return StreamReply(relay_stream(source), source=source)

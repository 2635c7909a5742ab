"""One client request through the pools: plan, admit, prefill leg, decode leg.

The order of operations (VLLM.md's NIXL protocol):

1. the router picks a decode worker and decides disaggregated vs decode-only (decode-only also
   when no prefill worker shares that decode worker's KV layout);
2. the request is admitted to the decode pool *before* its prefill leg, so that once the prefill
   answers, the decode leg starts at once -- a wait in the decode queue would eat into the
   prefill worker's KV lease;
3. disaggregated: ``prefill.PrefillLeg`` (retries, validation of ``kv_transfer_params``);
4. ``decode.DecodeLeg`` (retries, the KV-load-failure retry with a local prefill, the lease
   budget, commit on the first output).

The routing decision is counted once, when it is final.  The flow returns a ``Reply`` or a
``StreamReply``; the app turns them into HTTP responses carrying the route's headers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from disagg.gateway.context import RequestContext
from disagg.gateway.decode import DecodeLeg
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.pools import Pool
from disagg.gateway.prefill import PrefillLeg
from disagg.gateway.replies import Reply, StreamReply, upstream_failure
from disagg.gateway.routing.contracts import NoEndpointError
from disagg.gateway.routing.disagg import DisaggRouter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowSettings:
    decode_local_fallback: bool
    prefill_pool: bool = True
    """False when the gateway runs without a prefill pool at all (aggregated workers): a
    request without a prefill leg is then ``decode_only``, not a ``fallback``."""


class Flow:
    def __init__(
        self,
        router: DisaggRouter,
        prefill_pool: Pool,
        decode_pool: Pool,
        prefill: PrefillLeg,
        decode: DecodeLeg,
        metrics: GatewayMetrics,
        settings: FlowSettings,
    ) -> None:
        self.router = router
        self.prefill_pool = prefill_pool
        self.decode_pool = decode_pool
        self.prefill = prefill
        self.decode = decode
        self.metrics = metrics
        self.settings = settings

    async def handle(self, ctx: RequestContext) -> Reply | StreamReply:
        """Serve one validated request; raises ``QueueFull`` (429) when a pool is saturated."""
        route = ctx.route
        try:
            plan = self.router.plan(
                ctx.routing, self.prefill_pool.endpoints(), self.decode_pool.endpoints()
            )
        except NoEndpointError:
            return upstream_failure("no decode worker is available", 503)
        route.decision, route.reason = plan.decision, plan.reason
        route.uncached_tokens = plan.uncached_tokens
        route.threshold = self.router.decider.min_uncached_prompt_tokens
        route.kv_layout = plan.decode.kv_layout
        no_prefill = plan.reason in ("no_prefill_endpoint", "no_compatible_prefill")
        if no_prefill and self.settings.prefill_pool:
            route.decision = "fallback"
        ctx.decode_target = plan.decode
        await self.decode_pool.admit(ctx.ticket)
        owned = True  # the decode slot, until the decode leg takes it
        try:
            if route.decision == "disaggregated":
                client_error = await self.prefill.run(ctx)
                if client_error is not None:
                    return client_error
                if route.reason == "prefill_failed" and not self.settings.decode_local_fallback:
                    self.metrics.decisions.labels("fallback").inc()
                    return upstream_failure("prefill failed on every worker tried")
            owned = False
            reply = await self.decode.serve(ctx)
        finally:
            if owned:
                self.decode_pool.release(ctx.ticket)
        self.metrics.decisions.labels(route.decision).inc()
        if log.isEnabledFor(logging.INFO):  # its arguments cost even when the line is dropped
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

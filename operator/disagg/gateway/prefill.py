"""The prefill leg: compute the prompt's KV on a prefill worker and validate the hand-off.

The leg goes to a prefill worker whose KV the chosen decode worker can load (``routing.compat``).
A worker that fails -- connection, timeout, 5xx, 408/429, or an answer without
``kv_transfer_params`` -- is replaced by another, up to ``prefill_attempts``; a 4xx is the
client's error and is returned as is.  An answer whose params fail ``handoff.check_kv_params``
is not retried on another prefill worker: the request goes decode-only (the decode worker
prefills locally), because params a worker got wrong once say something is off with it, and a
decode worker fed them could die or answer wrong.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from disagg.gateway.context import RequestContext
from disagg.gateway.discovery import WorkerInfo
from disagg.gateway.handoff import HandoffRules, InvalidParams, PrefillSource, check_kv_params
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.pools import Pool
from disagg.gateway.replies import Reply, retryable
from disagg.gateway.requests import encode, loads, prefill_body
from disagg.gateway.routing.disagg import DisaggRouter
from disagg.gateway.upstream import UpstreamClient, UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillSettings:
    attempts: int
    timeout_seconds: float
    rules: HandoffRules


class PrefillLeg:
    def __init__(
        self,
        client: UpstreamClient,
        router: DisaggRouter,
        pool: Pool,
        metrics: GatewayMetrics,
        settings: PrefillSettings,
    ) -> None:
        self.client = client
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self.settings = settings
        self._sources: dict[str, tuple[WorkerInfo, PrefillSource]] = {}

    async def run(self, ctx: RequestContext) -> Reply | None:
        """Set ``ctx.kv_params`` (validated) or make the route a fallback; a client-error
        ``Reply`` from a prefill worker is returned for the client as is."""
        leg = encode(prefill_body(ctx.request.body))
        assert ctx.decode_target is not None
        await self.pool.admit(ctx.ticket)
        try:
            tried: set[str] = set()
            for _ in range(self.settings.attempts):
                endpoint = self.router.pick_prefill(
                    ctx.routing, self.pool.endpoints(), ctx.decode_target, frozenset(tried)
                )
                if endpoint is None:
                    break
                url = endpoint.url
                tried.add(url)
                started = time.monotonic()
                self.pool.start(url)
                try:
                    answer = await self.client.post(
                        url + ctx.request.path, leg, ctx.headers, self.settings.timeout_seconds
                    )
                except UpstreamError as exc:
                    self._failed(url, exc)
                    continue
                finally:
                    self.pool.finish(url)
                if answer.status != 200:
                    if not retryable(answer.status):
                        ctx.route.prefill = url
                        return Reply(answer.status, answer.body)
                    self._failed(url, UpstreamError("status", f"HTTP {answer.status}"))
                    continue
                if self._accept(ctx, url, answer.body):
                    self.metrics.prefill_time.observe(time.monotonic() - started)
                    return None
                if ctx.route.decision == "fallback":  # invalid params: decode-only now
                    return None
            ctx.route.fall_back("prefill_failed")
            return None
        finally:
            self.pool.release(ctx.ticket)

    def _accept(self, ctx: RequestContext, url: str, body: bytes) -> bool:
        """Validate an answer's params into ``ctx``; False to try another worker."""
        try:
            answer = loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("kv_transfer_params"), dict):
            log.warning("prefill %s answered without kv_transfer_params", url)
            self.metrics.upstream_errors.labels("prefill", "protocol").inc()
            return False
        worker = self.pool.workers.get(url)
        source = self._source(url, worker.info if worker is not None else None)
        ctx.route.prefill = url
        try:
            params = check_kv_params(answer, source, self.settings.rules, self.pool.owner_of_engine)
        except InvalidParams as exc:
            log.warning("request %s: prefill %s: refused kv_transfer_params: %s",
                        ctx.route.request_id, url, exc)  # fmt: skip
            self.metrics.upstream_errors.labels("prefill", "protocol").inc()
            self.metrics.kv_handoff_failures.labels("invalid_params").inc()
            ctx.drop_kv("invalid_params")
            return False
        if worker is not None:
            worker.engine_ids.add(str(params["remote_engine_id"]))
        self.router.record("prefill", ctx.routing, url)
        ctx.kv_params = params
        ctx.prefill_done = time.monotonic()
        ctx.prefill_endpoint = worker.endpoint() if worker is not None else None
        return True

    def _source(self, url: str, info: WorkerInfo | None) -> PrefillSource:
        """The answering worker as discovery knows it: kept while its ``WorkerInfo`` is the
        same object (``Pool.sync`` replaces it when it changes), so the host is parsed from
        the url once per worker, not once per request."""
        if info is None:
            return PrefillSource(url, url.split("://", 1)[-1].rsplit(":", 1)[0])
        kept = self._sources.get(url)
        if kept is not None and kept[0] is info:
            return kept[1]
        if len(self._sources) > 2 * len(self.pool.workers):  # workers that went away
            self._sources.clear()
        source = PrefillSource(url, info.host, info.side_channel_port, info.tensor_parallel)
        self._sources[url] = (info, source)
        return source

    def _failed(self, url: str, exc: UpstreamError) -> None:
        log.warning("prefill worker %s failed (%s): %s", url, exc.kind, exc)
        self.metrics.upstream_errors.labels("prefill", exc.kind).inc()
        if exc.kind in ("connect", "timeout"):
            self.pool.mark(url, healthy=False)

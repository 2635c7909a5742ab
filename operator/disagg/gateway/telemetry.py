"""Periodic scrape of every worker's ``/metrics`` and ``/health``: load for the scorers, health.

The scorers need each worker's queue (``vllm:num_requests_waiting``), running count and KV-cache
usage.  The gateway reads them itself rather than from Prometheus: fresher (default every second)
and no dependency on a monitoring stack on the request path.  Only those three families are
needed, so the text is scanned line by line instead of parsed in full; values are summed over the
``engine`` label (data parallelism), KV usage takes the max.

Health is ``/health`` *and* ``/metrics``: vLLM keeps serving ``/metrics`` after its engine died
(its ``/health`` then answers 503), so a worker judged by its metrics alone would stay in
rotation, dead.  Either failing marks the worker unhealthy (the ``healthy`` filter then avoids
it) within one scrape interval; the next round where both answer clears the mark.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass

from disagg.gateway.pools import Pool
from disagg.gateway.upstream import UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"


@dataclass(frozen=True)
class WorkerLoad:
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0


_LOAD_LINE = re.compile(
    r"^(vllm:num_requests_waiting|vllm:num_requests_running|vllm:kv_cache_usage_perc)"
    r"(?:\{[^\n]*\})?[ \t]+(\S+)",
    re.MULTILINE,
)
"""A sample line of one of the three families: its name and value (labels skipped up to the
line's last ``}``).  One C-level scan of the text instead of a Python loop over every line --
a worker's exposition is mostly histogram buckets the gateway never reads."""


def parse_load(text: str) -> WorkerLoad:
    """Sum waiting/running over engines and take the max KV usage from Prometheus text."""
    waiting = running = kv = 0.0
    for name, raw in _LOAD_LINE.findall(text):
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isnan(value):
            continue
        if name == WAITING:
            waiting += value
        elif name == RUNNING:
            running += value
        else:
            kv = max(kv, value)
    return WorkerLoad(waiting, running, kv)


class Telemetry:
    def __init__(
        self,
        client: UpstreamClient,
        pools: list[Pool],
        interval_seconds: float,
        timeout_seconds: float = 2.0,
    ) -> None:
        self.client = client
        self.pools = pools
        self.interval = interval_seconds
        self.timeout = min(timeout_seconds, max(0.2, interval_seconds * 2))

    async def scrape_once(self) -> None:
        jobs = [(pool, url) for pool in self.pools for url in pool.urls()]
        await asyncio.gather(*(self._scrape(pool, url) for pool, url in jobs))

    async def _scrape(self, pool: Pool, url: str) -> None:
        try:
            health, response = await asyncio.gather(
                self.client.get(f"{url}/health", self.timeout),
                self.client.get(f"{url}/metrics", self.timeout),
            )
            if health.status != 200:
                raise UpstreamError("status", f"/health answered {health.status}", health.status)
            if response.status != 200:
                raise UpstreamError("status", f"HTTP {response.status}", response.status)
            load = parse_load(response.body.decode("utf-8", errors="replace"))
        except UpstreamError as exc:
            if pool.workers.get(url) is not None and pool.workers[url].healthy:
                log.warning("scrape of %s failed: %s", url, exc)
            pool.mark(url, healthy=False)
            return
        worker = pool.workers.get(url)
        if worker is None:  # removed while we were scraping
            return
        worker.waiting, worker.running, worker.kv_cache_usage = (
            load.waiting,
            load.running,
            load.kv_cache_usage,
        )
        pool.mark(url, healthy=True)

    async def run(self) -> None:
        while True:
            try:
                await self.scrape_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a scrape bug must not stop telemetry for good
                log.exception("telemetry round failed")
            await asyncio.sleep(self.interval)

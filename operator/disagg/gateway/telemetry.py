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


_FAMILIES = (WAITING, RUNNING, KV_USAGE)


def _samples(text: str, name: str) -> list[str]:
    """The raw values of one family's sample lines (labels skipped up to the line's last ``}``).

    ``str.find`` jumps to each line that starts with the name, in C.  A worker's exposition is
    mostly histogram buckets the gateway never reads, and a regular expression anchored at every
    line start cost ~0.6 ms per worker and scrape: most of the gateway's CPU while idle, and a
    few per cent of it under load."""
    values: list[str] = []
    needle = "\n" + name
    found = 0 if text.startswith(name) else text.find(needle) + 1  # 0: not found (or line 1)
    if found == 0 and not text.startswith(name):
        return values
    while True:
        begin = found + len(name)
        stop = text.find("\n", begin)
        line = text[begin:] if stop == -1 else text[begin:stop]
        if line[:1] == "{":
            line = line[line.rfind("}") + 1 :]
        value = line.lstrip(" \t")
        if len(value) < len(line) and value and not value[0].isspace():  # [ \t]+ then \S+
            values.append(value.split(None, 1)[0])
        if stop == -1:
            return values
        found = text.find(needle, stop) + 1
        if found == 0:
            return values


def parse_load(text: str) -> WorkerLoad:
    """Sum waiting/running over engines and take the max KV usage from Prometheus text."""
    totals = [0.0, 0.0, 0.0]
    for i, name in enumerate(_FAMILIES):
        for raw in _samples(text, name):
            try:
                value = float(raw)
            except ValueError:
                continue
            if math.isnan(value):
                continue
            totals[i] = max(totals[i], value) if name == KV_USAGE else totals[i] + value
    return WorkerLoad(*totals)


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

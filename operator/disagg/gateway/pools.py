"""Live state of one pool of workers and its bounded admission queue.

A ``Pool`` holds the workers discovery reported (with what the gateway knows of each: requests in
flight, the last scraped queue and KV usage, health) and hands the router immutable ``Endpoint``
snapshots.  Admission (``admission.Admission``: limits from the engines' capacity, a fair and
bounded wait, 429 beyond) bounds the work the gateway puts on a pool; its wait is the
``disagg_gateway_queue_depth`` the prefill HPA scales on, and ``disagg_gateway_busy_workers``
says how many workers' worth of work is admitted.

Those gauges, and each worker's in-flight and health ones, mirror counts kept here; they are read
when ``/metrics`` is scraped (``GatewayMetrics.read``), so admitting, starting and finishing a
request touches no metric.  Only with several processes (``workers``: values in shared files,
which a scrape from another process reads) are they set where the counts change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from disagg.gateway.admission import Admission, QueueFull, Ticket
from disagg.gateway.config import PoolQueueConfig
from disagg.gateway.discovery import Role, WorkerInfo
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.routing.contracts import Endpoint


@dataclass
class Worker:
    url: str
    info: WorkerInfo
    inflight: int = 0
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    healthy: bool = True
    engine_ids: set[str] = field(default_factory=set)
    """NIXL engine ids seen in this worker's ``kv_transfer_params`` since it (re)started."""
    gauges: tuple[Any, Any] | None = field(default=None, compare=False, repr=False)
    """Its in-flight and health series, looked up once: where they are set on every change
    (``workers``: see ``Pool``), the request path sets them several times per request."""

    def endpoint(self) -> Endpoint:
        return Endpoint(
            self.url,
            self.inflight,
            self.waiting,
            self.running,
            self.kv_cache_usage,
            self.healthy,
            self.info.kv_layout,
            self.info.tensor_parallel,
        )


def _prompt_cost(ticket: Ticket) -> int:
    return ticket.prompt_tokens


def _kv_cost(ticket: Ticket) -> int:
    return ticket.prompt_tokens + ticket.max_tokens


#: What a request costs a pool's token budget: a prefill worker computes the prompt, a decode
#: worker holds the KV of prompt and output.
_COSTS = {"prefill": _prompt_cost, "decode": _kv_cost}

__all__ = ["Pool", "QueueFull", "Ticket", "Worker"]


class Pool:
    def __init__(
        self,
        name: str,
        role: Role,
        queue: PoolQueueConfig,
        max_wait_seconds: float,
        metrics: GatewayMetrics,
        gateways: int = 1,
    ) -> None:
        self.name = name
        self.role: Role = role
        self.queue = queue
        self.max_wait_seconds = max_wait_seconds
        self.metrics = metrics
        self.workers: dict[str, Worker] = {}
        self.admission = admission = Admission(
            name, role, queue, max_wait_seconds, _COSTS[role], gateways=gateways
        )
        admission.on_refused = self._export_rejection
        metrics.init_pool(name, role)
        labels = (name, role)
        self._queue_depth = metrics.queue_depth.labels(*labels)
        self._inflight = metrics.inflight.labels(*labels)
        self._busy_workers = metrics.busy_workers.labels(*labels)
        self._queue_wait = metrics.queue_wait.labels(*labels)
        self._sets_gauges = not metrics.reads_gauges
        """True with shared files: the gauges are set on every change, not read when scraped."""
        if self._sets_gauges:
            admission.on_change = self._export_admission
        else:
            metrics.read(self._queue_depth, lambda: admission.queued)
            metrics.read(self._inflight, lambda: admission.admitted)
            metrics.read(self._busy_workers, lambda: admission.busy_workers)
        self._exported: tuple[int, int, float] = (0, 0, 0.0)
        """The admission gauges' values as last set (``init_pool`` exports zeros)."""

    # -- membership -------------------------------------------------------------------------
    def sync(self, infos: list[WorkerInfo]) -> list[str]:
        """Make the worker set equal to ``infos``; returns the urls removed."""
        wanted = {info.url: info for info in infos}
        removed = [u for u in self.workers if u not in wanted]
        for url in removed:
            del self.workers[url]
            self.metrics.remove_worker(self.name, self.role, url)
        for url, info in wanted.items():
            worker = self.workers.get(url)
            if worker is None:
                self.workers[url] = worker = Worker(url, info)
                self._export_worker(worker)
            elif worker.info != info:
                if worker.info.incarnation != info.incarnation:
                    worker.engine_ids.clear()  # restarted: a new NIXL engine id
                worker.info = info
        self.metrics.ready_workers.labels(self.name, self.role).set(len(self.workers))
        self.admission.set_workers(len(self.workers))
        return removed

    def endpoints(self) -> list[Endpoint]:
        return [w.endpoint() for w in self.workers.values()]

    def urls(self) -> list[str]:
        return list(self.workers)

    def owner_of_engine(self, engine_id: str) -> str | None:
        """The worker whose answers carried this NIXL engine id (since it last started)."""
        for worker in self.workers.values():
            if engine_id in worker.engine_ids:
                return worker.url
        return None

    # -- per-worker accounting --------------------------------------------------------------
    def start(self, url: str) -> None:
        worker = self.workers.get(url)
        if worker is not None:
            worker.inflight += 1
            if self._sets_gauges:
                self._export_inflight(worker)

    def finish(self, url: str) -> None:
        worker = self.workers.get(url)
        if worker is not None:
            worker.inflight = max(0, worker.inflight - 1)
            # A finished request frees a batch slot (and its KV blocks), which the engine fills
            # from its waiting queue: the scraped queue is one shorter until the next scrape says
            # otherwise.  Without this, a scrape that caught our own request queued keeps a
            # phantom request on the worker for a whole interval after it finished.
            worker.waiting = max(0.0, worker.waiting - 1)
            if self._sets_gauges:
                self._export_inflight(worker)

    def mark(self, url: str, healthy: bool) -> None:
        worker = self.workers.get(url)
        if worker is not None and worker.healthy != healthy:
            worker.healthy = healthy
            if self._sets_gauges:
                self._export_worker(worker)

    def _export_worker(self, worker: Worker) -> None:
        """A new worker's series (read when scraped), or -- shared files -- its health change."""
        gauges = worker.gauges
        if gauges is None:
            labels = (self.name, self.role, worker.url)
            gauges = worker.gauges = (
                self.metrics.worker_inflight.labels(*labels),
                self.metrics.worker_healthy.labels(*labels),
            )
            if not self._sets_gauges:
                self.metrics.read(gauges[0], lambda: worker.inflight)
                self.metrics.read(gauges[1], lambda: 1 if worker.healthy else 0)
                return
        gauges[0].set(worker.inflight)
        gauges[1].set(1 if worker.healthy else 0)

    def _export_inflight(self, worker: Worker) -> None:
        """The request path's export: only the in-flight count changed (health is exported
        where it changes, ``mark``)."""
        if worker.gauges is None:
            self._export_worker(worker)
        else:
            worker.gauges[0].set(worker.inflight)

    # -- admission (``admission.Admission``) ----------------------------------------------------
    @property
    def admitted(self) -> int:
        return self.admission.admitted

    async def admit(self, ticket: Ticket) -> None:
        """Wait for a slot (fair, bounded); raise ``QueueFull`` (429) beyond the bounds."""
        waited = await self.admission.admit(ticket)
        self._queue_wait.observe(waited)

    def release(self, ticket: Ticket) -> None:
        self.admission.release(ticket)

    def _export_admission(self) -> None:
        # Called on every admission and release: a series is set only when its value moved
        # (at low load the queue stays empty; the profile showed a dozen sets per request).
        admission = self.admission
        queued, admitted, busy = admission.queued, admission.admitted, admission.busy_workers
        last_queued, last_admitted, last_busy = self._exported
        if queued != last_queued:
            self._queue_depth.set(queued)
        if admitted != last_admitted:
            self._inflight.set(admitted)
        if busy != last_busy:
            self._busy_workers.set(busy)
        self._exported = (queued, admitted, busy)

    def _export_rejection(self) -> None:
        self.metrics.rejected.labels(self.name, self.role).inc()

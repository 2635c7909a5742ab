"""Live state of one pool of workers and its bounded admission queue.

A ``Pool`` holds the workers discovery reported (with what the gateway knows of each: requests in
flight, the last scraped queue and KV usage, health) and hands the router immutable ``Endpoint``
snapshots.  Admission bounds the work the gateway puts on a pool: at most
``max_inflight_per_worker`` times the number of workers run at once, up to ``max_queued`` more
wait (that wait is the ``disagg_gateway_queue_depth`` the HPAs scale on), and beyond that -- or
after ``max_wait_seconds`` -- the request is refused with ``QueueFull`` (HTTP 429).  Waiters are
served first come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from disagg.gateway.config import PoolQueueConfig
from disagg.gateway.discovery import Role, WorkerInfo
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.routing.contracts import Endpoint


class QueueFull(Exception):
    """The pool's queue is full or the wait was too long; the client should retry later."""

    def __init__(self, pool: str, role: str, reason: str) -> None:
        super().__init__(f"{role} pool {pool!r}: {reason}")
        self.pool = pool
        self.role = role


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


class Pool:
    def __init__(
        self,
        name: str,
        role: Role,
        queue: PoolQueueConfig,
        max_wait_seconds: float,
        metrics: GatewayMetrics,
    ) -> None:
        self.name = name
        self.role: Role = role
        self.queue = queue
        self.max_wait_seconds = max_wait_seconds
        self.metrics = metrics
        self.workers: dict[str, Worker] = {}
        self.admitted = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        metrics.init_pool(name, role)

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
        self._wake()
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
            self._export_worker(worker)

    def finish(self, url: str) -> None:
        worker = self.workers.get(url)
        if worker is not None:
            worker.inflight = max(0, worker.inflight - 1)
            self._export_worker(worker)

    def mark(self, url: str, healthy: bool) -> None:
        worker = self.workers.get(url)
        if worker is not None and worker.healthy != healthy:
            worker.healthy = healthy
            self._export_worker(worker)

    def _export_worker(self, worker: Worker) -> None:
        labels = (self.name, self.role, worker.url)
        self.metrics.worker_inflight.labels(*labels).set(worker.inflight)
        self.metrics.worker_healthy.labels(*labels).set(1 if worker.healthy else 0)

    # -- admission --------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.queue.max_inflight_per_worker * max(1, len(self.workers))

    def has_room(self) -> bool:
        """Whether a new request would be admitted or queued (not refused) right now."""
        return self.admitted < self.capacity or len(self._waiters) < self.queue.max_queued

    def refuse_if_full(self) -> None:
        """Raise ``QueueFull`` now if a request would be refused (checked before a prefill)."""
        if not self.has_room():
            self.metrics.rejected.labels(self.name, self.role).inc()
            raise QueueFull(self.name, self.role, f"{len(self._waiters)} requests already queued")

    async def admit(self) -> None:
        """Wait for a slot (FIFO); raise ``QueueFull`` when the queue is full or the wait long."""
        if self.admitted < self.capacity and not self._waiters:
            self._take()
            return
        if len(self._waiters) >= self.queue.max_queued:
            self.metrics.rejected.labels(self.name, self.role).inc()
            raise QueueFull(self.name, self.role, f"{len(self._waiters)} requests already queued")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._export_queue()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.max_wait_seconds)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived just as we gave up; hand it on
            self.metrics.rejected.labels(self.name, self.role).inc()
            raise QueueFull(
                self.name, self.role, f"waited {self.max_wait_seconds:.0f}s for a slot"
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if not waiter.done():
                waiter.cancel()
            self._export_queue()

    def release(self) -> None:
        self.admitted = max(0, self.admitted - 1)
        self.metrics.inflight.labels(self.name, self.role).set(self.admitted)
        self._wake()

    def _take(self) -> None:
        self.admitted += 1
        self.metrics.inflight.labels(self.name, self.role).set(self.admitted)

    def _wake(self) -> None:
        while self._waiters and self.admitted < self.capacity:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._take()
            waiter.set_result(None)
        self._export_queue()

    def _export_queue(self) -> None:
        pending = sum(1 for w in self._waiters if not w.done())
        self.metrics.queue_depth.labels(self.name, self.role).set(pending)

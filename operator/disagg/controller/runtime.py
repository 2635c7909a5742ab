"""The controller: a work queue of object keys, a few workers, observe → plan → act.

Watch events (``handlers``) only enqueue keys; ``workers`` asyncio tasks take keys
and reconcile them.  ``observe`` runs on the event loop (it reads kopf's indexes,
which only the loop mutates); ``plan`` and ``act`` run in a thread pool of the same
size (the Kubernetes client is synchronous), so at most ``workers`` requests are
in flight — the operator's whole load on the API server.

Failures are remembered per key (not in etcd): a permanent one is not retried for
the same generation until its slow backoff expires, a transient one backs off
exponentially, and a resourceVersion conflict is looked at again as soon as the
cache can have caught up.  A background task refreshes the Prometheus snapshot and
enqueues only what changed; another re-enqueues everything now and then, which
costs nothing but CPU because reconciles read the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from disagg.api.versions import DEFAULT_GATEWAY_IMAGE
from disagg.controller import act
from disagg.controller.conditions import Reason, now
from disagg.controller.failures import Failure, FailureMemory
from disagg.controller.kube import Kube
from disagg.controller.metrics import MetricsSnapshot, PrometheusClient, read_snapshot
from disagg.controller.observe import observe_disagg, observe_pool
from disagg.controller.plan import failure_plan
from disagg.controller.plan_disagg import plan_disagg
from disagg.controller.plan_pool import plan_pool
from disagg.controller.plantypes import EventSpec, Observed, Plan, PlanConfig
from disagg.controller.store import Store
from disagg.render.podpolicy import PolicySet
from disagg.render.pool import DEFAULT_PROMETHEUS_URL

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
"""(kind, namespace, name) of a DisaggDeployment or InferencePool."""

POOL = "InferencePool"
DISAGG = "DisaggDeployment"


@dataclass(frozen=True)
class Settings:
    """How the controller runs (``disagg operator`` flags)."""

    workers: int = 8
    """Concurrent reconciles, and so concurrent API requests."""
    prometheus_url: str | None = None
    """Where observed load is read (None: not read; KEDA triggers then use the default)."""
    metrics_interval: float = 30.0
    """Seconds between Prometheus snapshots."""
    resync_interval: float = 600.0
    """Seconds between re-reconciles of everything (from the cache: no API reads)."""
    child_delay: float = 0.3
    """Coalescing delay for events of children and pods (a rollout's burst is one reconcile)."""
    policies: PolicySet = field(default_factory=PolicySet)
    """What worker pods may do, per namespace."""
    trusted_gateway_images: frozenset[str] = frozenset()
    """Gateway images every namespace may run, besides the default one."""
    fault_apply_delay: float = 0.0
    """Fault injection for tests: seconds to sleep before writing children."""
    gateway_cluster_role: str | None = None
    """ClusterRole bound for each gateway instead of a Role of its own (the chart's)."""


@dataclass
class _Result:
    plan: Plan | None = None
    outcome: act.Outcome | None = None
    failure: Failure | None = None


class Controller:
    def __init__(self, kube: Kube, settings: Settings) -> None:
        from disagg.controller.workqueue import WorkQueue

        self.kube = kube
        self.settings = settings
        self.queue: WorkQueue[Key] = WorkQueue(self._priority)
        self.started: set[Key] = set()
        """Keys reconciled at least once by this process (their objects are under way)."""
        self.store: Store | None = None
        self.failures: dict[Key, FailureMemory] = {}
        self.conflicts_in_a_row: dict[Key, int] = {}
        self.conflicts: dict[tuple[str, str, str], set[Key]] = {}
        """(kind, namespace, name) of objects in the way of a key -> the keys waiting on them."""
        self.snapshot = MetricsSnapshot(configured=bool(settings.prometheus_url))
        self.prometheus = (
            PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None
        )
        self.stats: Counter[str] = Counter()
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="reconcile")
        self._tasks: list[asyncio.Task[None]] = []
        self._attached = asyncio.Event()
        self.deletion_costs = True
        """Cleared the first time the API server forbids a pod annotation."""

    def _priority(self, key: Key) -> int:
        """Finish what was started first: pools (children), then objects already
        reconciled, then new ones (see ``workqueue``)."""
        if key[0] == POOL:
            return 0
        return 1 if key in self.started else 2

    # ------------------------------------------------------------------ wiring

    def attach(self, indexes: Mapping[str, Any]) -> None:
        """Take kopf's indexes (handed to every handler) as the cache; done once."""
        if self.store is None:
            self.store = Store(indexes)
            self._attached.set()

    def enqueue(self, kind: str, namespace: str, name: str, delay: float = 0.0) -> None:
        self.queue.add((kind, namespace, name), delay)

    def enqueue_waiters(self, kind: str, namespace: str, name: str) -> None:
        """Keys blocked by a same-named object of ``kind`` look again when it changes."""
        for key in self.conflicts.get((kind, namespace, name), set()):
            self.queue.add(key)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}")
            for i in range(self.settings.workers)
        ]
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="resync"))
        if self.prometheus is not None:
            self._tasks.append(asyncio.create_task(self._metrics_loop(), name="metrics"))

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.prometheus is not None:
            self.prometheus.close()

    # ----------------------------------------------------------------- workers

    async def _worker(self) -> None:
        await self._attached.wait()
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except Exception:  # a bug must not kill the worker: log it, look again later
                log.exception("reconcile of %s %s/%s failed", *key)
                self.queue.add(key, 30.0)
            finally:
                self.queue.done(key)

    def probe(self) -> dict[str, object]:
        """What the liveness endpoint reports (kopf adds it to ``/healthz``)."""
        return {
            "queued": len(self.queue),
            "processing": self.queue.processing,
            "reconciles": self.stats["reconciles"],
            "failing": len(self.failures),
            "requests": {f"{verb} {kind}": n for (verb, kind), n in self.kube.requests.items()},
        }

    def observe(self, key: Key) -> Observed | None:
        assert self.store is not None
        kind, namespace, name = key
        observe = observe_pool if kind == POOL else observe_disagg
        return observe(self.store, namespace, name, self.snapshot, self.failures.get(key))

    async def reconcile(self, key: Key) -> None:
        loop = asyncio.get_running_loop()
        observed = self.observe(key)
        if observed is None:
            self.started.discard(key)
            self.failures.pop(key, None)
            self.conflicts_in_a_row.pop(key, None)
            self._forget_conflicts(key)
            return
        cfg = PlanConfig(
            policies=self.settings.policies,
            prometheus_url=self.settings.prometheus_url or DEFAULT_PROMETHEUS_URL,
            now=now(),
            clock=loop.time(),
            deletion_costs=self.deletion_costs,
            trusted_gateway_images=self.settings.trusted_gateway_images | {DEFAULT_GATEWAY_IMAGE},
            gateway_cluster_role=self.settings.gateway_cluster_role,
        )
        started = time.monotonic()
        self.started.add(key)
        result = await loop.run_in_executor(self._executor, self._plan_and_act, observed, cfg)
        self.stats["reconciles"] += 1
        self.stats["reconcile_seconds_milli"] += int((time.monotonic() - started) * 1000)
        self._after(key, observed, result, loop.time())

    def _plan_and_act(self, o: Observed, cfg: PlanConfig) -> _Result:
        plan = plan_pool(o, cfg) if o.kind == POOL else plan_disagg(o, cfg)
        if plan.changes_children and self.settings.fault_apply_delay:
            time.sleep(self.settings.fault_apply_delay)
        assert self.store is not None
        remember = self.store.remember
        outcome = act.act_children(self.kube, o, plan, remember)
        stamp = cfg.now
        if outcome.conflict or outcome.gone:
            return _Result(plan, outcome)
        if outcome.failure is not None:
            failed = failure_plan(o, outcome.failure, cfg)
            if act.write_status(self.kube, o, failed, remember):
                act.post_events(self.kube, o, failed.events, stamp, time.time_ns())
            # Logged at WARNING when it is news (its status and Event go out), not per retry.
            level = logging.WARNING if failed.events else logging.DEBUG
            log.log(level, "%s %s/%s: %s", o.kind, o.namespace, o.name, outcome.failure.message)
            return _Result(plan, outcome, outcome.failure)
        # Events about status transitions go out with the status write: when the write is
        # deferred to the next reconcile, that reconcile sees the same transition again.
        deferred = bool(outcome.changed) and plan.failure is None
        events = [] if deferred else list(plan.events)
        if outcome.changed:
            log.info("%s %s/%s: %s", o.kind, o.namespace, o.name, plan.applied_message())
            # Events go to the object the user wrote: a DisaggDeployment's pools are its
            # business (its own Applied event names them), a standalone pool is the user's.
            if o.parent is None:
                events.insert(0, EventSpec("Normal", "Applied", plan.applied_message()))
        if not deferred and not act.write_status(self.kube, o, plan, remember):
            outcome.gone = True
        if events and not outcome.gone:
            act.post_events(self.kube, o, events, stamp, time.time_ns())
        if plan.failure is not None:
            # Once, when the failure is new (its status and Event go out); not on every look.
            level = logging.WARNING if plan.status is not None else logging.DEBUG
            log.log(level, "%s %s/%s: %s", o.kind, o.namespace, o.name, plan.failure.message)
        return _Result(plan, outcome, plan.failure)

    def _after(self, key: Key, o: Observed, result: _Result, clock: float) -> None:
        """Remember failures, track conflicts and schedule the next look."""
        plan, outcome = result.plan, result.outcome
        if outcome is not None and outcome.pod_patches_forbidden and self.deletion_costs:
            log.info("the operator may not annotate pods: pod-deletion-cost is not set")
            self.deletion_costs = False
        self._forget_conflicts(key)
        if outcome is not None and key[0] == DISAGG:
            # A pool this reconcile created or changed is reconciled now, from the object the
            # write answered with (the store remembers it), not when its watch event comes.
            for kind, name in outcome.changed:
                if kind == POOL:
                    self.enqueue(POOL, key[1], name)
        if plan is not None:
            for conflict in plan.conflicts:
                self.conflicts.setdefault((conflict[0], key[1], conflict[1]), set()).add(key)
        if outcome is not None and outcome.gone:
            return
        if outcome is not None and outcome.conflict:
            # Someone wrote the object since the cache saw it: look again once the watch has
            # caught up -- soon, then backing off, so a conflict can never become a hot loop.
            self.conflicts_in_a_row[key] = self.conflicts_in_a_row.get(key, 0) + 1
            self.queue.add(key, min(30.0, 0.5 * 2 ** (self.conflicts_in_a_row[key] - 1)))
            return
        self.conflicts_in_a_row.pop(key, None)
        failure = result.failure
        if failure is None:
            self.failures.pop(key, None)
        elif outcome is not None and outcome.failure is not None:
            if failure.reason == Reason.NAME_CONFLICT:
                # Created meanwhile by someone else: the cache will show what is in the way.
                self.conflicts_in_a_row[key] = self.conflicts_in_a_row.get(key, 0) + 1
                self.queue.add(key, min(30.0, 2.0 ** self.conflicts_in_a_row[key]))
                return
            before = self.failures.get(key)
            same = before and before.generation == o.generation and before.failure == failure
            attempts = before.attempts + 1 if before and same else 1
            delay = failure.retry_after(attempts)
            self.failures[key] = FailureMemory(o.generation, failure, attempts, clock + delay)
            self.queue.add(key, delay)
            return
        if plan is not None and plan.requeue_after is not None:
            self.queue.add(key, max(0.1, plan.requeue_after))

    def _forget_conflicts(self, key: Key) -> None:
        for waiting in self.conflicts.values():
            waiting.discard(key)
        for ref in [ref for ref, waiting in self.conflicts.items() if not waiting]:
            del self.conflicts[ref]

    # ------------------------------------------------------------ background

    async def _resync_loop(self) -> None:
        await self._attached.wait()
        interval = self.settings.resync_interval
        while True:
            await asyncio.sleep(interval)
            assert self.store is not None
            for kind in (DISAGG, POOL):
                for namespace, name in self.store.keys(kind):
                    self.enqueue(kind, namespace, name, random.uniform(0, interval / 10))

    async def _metrics_loop(self) -> None:
        await self._attached.wait()
        loop = asyncio.get_running_loop()
        while True:
            assert self.store is not None
            pod_pools = self.store.pod_pools()
            snapshot = await loop.run_in_executor(
                self._executor, read_snapshot, self.prometheus, pod_pools
            )
            old, self.snapshot = self.snapshot, snapshot
            for namespace, name in self.store.keys(POOL):
                if old.pool(namespace, name) != snapshot.pool(namespace, name):
                    self.enqueue(POOL, namespace, name)
            for namespace, name in self.store.keys(DISAGG):
                if old.decisions_of(namespace, name) != snapshot.decisions_of(namespace, name):
                    self.enqueue(DISAGG, namespace, name)
            await asyncio.sleep(self.settings.metrics_interval)

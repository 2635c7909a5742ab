"""The gateway's Prometheus series (prometheus-client), one registry per gateway instance.

The names are an interface: the HPAs scale the prefill pool on
``disagg_gateway_queue_depth{role="prefill"}`` (through prometheus-adapter) and the operator reads
the decision counter to report whether disaggregation is effective.  docs/gateway.md lists them.
Latencies are measured as the client sees them (from request arrival at the gateway).  Per-worker
series carry a ``worker`` label and are removed when discovery drops the worker, so a scaled-down
pod does not linger as a flat line.

The request path updates these series a few dozen times per request, and the gateway needed no
more CPU per request than a Rust router (issue 16), so updates cost as little as the exposition
allows (the text on ``/metrics`` is exactly prometheus-client's):

* **No lock per update.**  One gateway process is one asyncio thread, and nothing else in it
  updates these series (the KV-event subscriber's are its own, in its own tasks), so a value here
  is a plain float (``_Plain``) where prometheus-client takes a mutex per ``inc``/``set``.  With
  several processes (``workers``) values live in shared files and keep the library's class.
* **Read, not pushed.**  Gauges that mirror state the gateway holds anyway (in flight per worker
  and per pool, queued, busy workers, health) are read when scraped (``GatewayMetrics.read``)
  instead of being set at every change -- four to a dozen sets per request before.  With shared
  files a scrape cannot call into the other processes, so there the owners still set them.
"""

from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest, values

#: Why a KV hand-off was abandoned (the ``reason`` label of ``kv_handoff_failures``).
HANDOFF_FAILURES = ("invalid_params", "lease_budget", "load_failed")


#: Whether values live in per-process files (``PROMETHEUS_MULTIPROC_DIR`` when the library was
#: imported: ``workers``); then every value is the library's and every gauge is set by its owner.
SHARED_FILES: bool = values.ValueClass._multiprocess


class _Plain:
    """A metric's value as a float without a lock (the library's ``MutexValue`` less its mutex)."""

    __slots__ = ("_exemplar", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


class _Reading:
    """A gauge's value read from the gateway's own state when scraped; it has no ``set``."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read

    def get(self) -> float:
        return float(self.read())

    def get_exemplar(self) -> None:
        return None


class _CachedLabels:
    """``labels()`` from a dict: prometheus-client validates and locks on every call, which the
    profile showed on the request path (several calls per request); a child, once made, is
    reused until ``remove``/``clear``."""

    _plain = False
    """True for a child whose values are ``_Plain`` floats: its updates need no call into them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children_cache: dict[tuple[Any, ...], Any] = {}

    def labels(self, *values: Any) -> Any:
        child = self._children_cache.get(values)
        if child is None:
            child = self._children_cache[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self._children_cache.clear()
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self._children_cache.clear()
        super().clear()  # type: ignore[misc]


# The request path updates a few dozen series per request (a histogram observation per relayed
# event).  prometheus-client checks on every update that the object is a child (two calls) and
# walks a histogram's buckets in Python; the overrides below do the same update with a C bisect,
# adding to a ``_Plain`` float in place, or with ``workers`` through one call into the library's
# shared-file value.  A parent with labels has no value: its calls go to the library, which raises
# as before.


class Counter(_CachedLabels, prometheus_client.Counter):  # type: ignore[misc]
    def _metric_init(self) -> None:
        super()._metric_init()
        if not SHARED_FILES:
            self._value = _Plain()
            self._plain = True

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if self._plain and amount >= 0 and not exemplar:
            self._value._value += amount
            return
        value = self.__dict__.get("_value")
        if value is None or exemplar or amount < 0:
            super().inc(amount, exemplar)
            return
        value.inc(amount)


class Gauge(_CachedLabels, prometheus_client.Gauge):  # type: ignore[misc]
    def _metric_init(self) -> None:
        super()._metric_init()
        if not SHARED_FILES:
            self._value = _Plain()

    def set(self, value: float) -> None:
        current = self.__dict__.get("_value")
        if current is None or self._is_most_recent:
            super().set(value)
            return
        current.set(float(value))


class Histogram(_CachedLabels, prometheus_client.Histogram):  # type: ignore[misc]
    def _metric_init(self) -> None:
        super()._metric_init()
        if not SHARED_FILES:
            self._sum = _Plain()
            self._buckets = [_Plain() for _ in self._upper_bounds]
            self._plain = True

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        # The first bucket whose upper bound is >= amount (the library's ``amount <= bound``).
        if self._plain and amount == amount and not exemplar:  # not NaN
            self._sum._value += amount
            self._buckets[bisect_left(self._upper_bounds, amount)]._value += 1.0
            return
        try:
            buckets = self._buckets
        except AttributeError:  # a parent: the library says why it cannot
            buckets = None
        if buckets is None or exemplar or amount != amount:  # ... an exemplar, NaN
            super().observe(amount, exemplar)
            return
        self._sum.inc(amount)
        buckets[bisect_left(self._upper_bounds, amount)].inc(1)

    def add_counts(self, counts: list[int], total: float) -> None:
        """Observations gathered elsewhere (``Tally``): ``counts[i]`` in bucket ``i``, summing
        to ``total``."""
        buckets = self._buckets
        for i, count in enumerate(counts):
            if count:
                buckets[i].inc(count)
        self._sum.inc(total)


class Tally:
    """A histogram's observations gathered locally and added to it in one go (``flush``).

    A relayed stream observes an inter-token gap per event, each a call, a bucket search and two
    locked updates; a tally makes that a bucket search and a list increment, and ``flush``
    (at the end of the stream, and every ``FLUSH_EVERY`` events of a long one) adds the counts.
    A scrape mid-stream misses at most that many gaps of the stream."""

    FLUSH_EVERY = 64
    __slots__ = ("bounds", "counts", "histogram", "pending", "total")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds: list[float] = histogram._upper_bounds
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.pending = 0

    def add(self, amount: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, amount)] += times
        self.total += amount * times
        self.pending += times
        if self.pending >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.histogram.add_counts(self.counts, self.total)
            self.counts = [0] * len(self.bounds)
            self.total = 0.0
            self.pending = 0


# ``*_created`` series double the exposition for no use to an HPA or a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reads_gauges = not SHARED_FILES
        """Whether gauges mirroring the gateway's state are read when scraped (``read``), or --
        values in shared files -- set by their owner on every change."""
        r = self.registry
        self.queue_depth = Gauge(
            "disagg_gateway_queue_depth",
            "Requests waiting in the gateway's admission queue for a pool.",
            ["pool", "role"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inflight = Gauge(
            "disagg_gateway_inflight_requests",
            "Requests the gateway has in flight to a pool (admitted, not finished).",
            ["pool", "role"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.busy_workers = Gauge(
            "disagg_gateway_busy_workers",
            "Workers' worth of work admitted to a pool: in-flight requests (or tokens, the fuller "
            "budget) divided by the per-worker limit.  Held at the pool's size while it is "
            "saturated, so an autoscaler following it keeps the workers a steady load needs.",
            ["pool", "role"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_wait = Histogram(
            "disagg_gateway_queue_wait_seconds",
            "Time a request waited in the gateway's admission queue for a pool (0: none).",
            ["pool", "role"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ready_workers = Gauge(
            "disagg_gateway_ready_workers",
            "Workers discovery reports ready (and not terminating) in a pool.",
            ["pool", "role"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.worker_inflight = Gauge(
            "disagg_gateway_worker_inflight_requests",
            "Requests in flight to one worker.",
            ["pool", "role", "worker"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.worker_healthy = Gauge(
            "disagg_gateway_worker_healthy",
            "1 if the worker's last scrape succeeded and no connection failed since, else 0.",
            ["pool", "role", "worker"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.requests = Counter(
            "disagg_gateway_requests",
            "Client requests by API path and response status (499: the client went away).",
            ["path", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "disagg_gateway_rejected_requests",
            "Requests answered 429 because a pool's queue was full or the wait too long.",
            ["pool", "role"],
            registry=r,
        )
        self.decisions = Counter(
            "disagg_gateway_routing_decisions",
            "Routing outcomes: disaggregated (P then D), decode_only (selective), fallback "
            "(prefill failed or absent; the decode worker prefilled locally).",
            ["decision"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "disagg_gateway_upstream_errors",
            "Failed calls to workers by role and kind (connect, timeout, status, protocol, "
            "empty: a stream that ended before any output, midstream).",
            ["role", "kind"],
            registry=r,
        )
        self.kv_handoff_failures = Counter(
            "disagg_gateway_kv_handoff_failures",
            "Disaggregated requests whose KV hand-off was abandoned and served with a local "
            "prefill: invalid_params (the prefill answer's kv_transfer_params failed "
            "validation), lease_budget (the decode leg could not start in time), load_failed "
            "(the decode worker could not load the KV; retried decode-only).",
            ["reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "disagg_gateway_time_to_first_token_seconds",
            "From request arrival to the first streamed event (streams) or the full answer.",
            ["decision"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "disagg_gateway_inter_token_latency_seconds",
            "Time between consecutive streamed events, as relayed to the client.",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.prefill_time = Histogram(
            "disagg_gateway_prefill_seconds",
            "Duration of the prefill leg (POST to a prefill worker until its answer).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.kv_handoff_time = Histogram(
            "disagg_gateway_kv_handoff_seconds",
            "From the prefill answer to the decode worker's first byte: KV pull plus the first "
            "decode step.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "disagg_gateway_request_duration_seconds",
            "From request arrival to the last byte sent.",
            ["decision"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text ``/metrics`` serves: this process's registry, or -- one of several
        processes (``workers``) -- every process's series, aggregated from the shared files."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))

    def read(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Export ``gauge`` (a child) as ``read()`` at each scrape (only if ``reads_gauges``)."""
        if not self.reads_gauges:
            raise RuntimeError("with shared files a gauge is set, never read when scraped")
        gauge._value = _Reading(read)

    def init_pool(self, pool: str, role: str) -> None:
        """Export zeros for a pool before its first request (HPAs need the series)."""
        self.queue_depth.labels(pool, role).set(0)
        self.inflight.labels(pool, role).set(0)
        self.busy_workers.labels(pool, role).set(0)
        self.queue_wait.labels(pool, role)
        self.ready_workers.labels(pool, role).set(0)
        self.rejected.labels(pool, role)
        for decision in ("disaggregated", "decode_only", "fallback"):
            self.decisions.labels(decision)
        for reason in HANDOFF_FAILURES:
            self.kv_handoff_failures.labels(reason)

    def remove_worker(self, pool: str, role: str, worker: str) -> None:
        for gauge in (self.worker_inflight, self.worker_healthy):
            with contextlib.suppress(KeyError):
                gauge.remove(pool, role, worker)

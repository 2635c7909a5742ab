"""The gateway's Prometheus series (prometheus-client), one registry per gateway instance.

The names are an interface: the HPAs scale the prefill pool on
``disagg_gateway_queue_depth{role="prefill"}`` (through prometheus-adapter) and the operator reads
the decision counter to report whether disaggregation is effective.  docs/gateway.md lists them.
Latencies are measured as the client sees them (from request arrival at the gateway).  Per-worker
series carry a ``worker`` label and are removed when discovery drops the worker, so a scaled-down
pod does not linger as a flat line.

The series are ``series``' cheap-to-update kinds of prometheus-client's.  Gauges that mirror state
the gateway holds anyway (in flight per worker and per pool, queued, busy workers, health) are
read when scraped (``read``) instead of being set at every change -- four to a dozen sets per
request before (issue 16); with several processes (``workers``) their owners still set them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest

from disagg.gateway.series import SHARED_FILES, Counter, Gauge, Histogram, Reading, Tally

__all__ = ["HANDOFF_FAILURES", "Counter", "GatewayMetrics", "Gauge", "Histogram", "Tally"]

#: Why a KV hand-off was abandoned (the ``reason`` label of ``kv_handoff_failures``).
HANDOFF_FAILURES = ("invalid_params", "lease_budget", "load_failed")


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
        gauge._value = Reading(read)

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

"""vLLM's Prometheus metrics, same names, labels and buckets style, on a private registry.

Names follow the v1 engine (see VLLM.md): every series carries ``model_name`` and ``engine``
(the engine index, always ``"0"`` here).  A private ``CollectorRegistry`` per simulator lets
several simulators run in one test process.  Latencies are wall-clock seconds, i.e. simulated
seconds divided by ``--sim-speedup``, because that is what a client of the simulator observes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_disable_created_metrics: Callable[[], None] = prometheus_client.disable_created_metrics

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_BYTES_BUCKETS = tuple(float(2**k) for k in range(16, 36, 2))


#: ``vllm:prompt_tokens_by_source``'s label values, as vLLM 0.26 and 0.33 name them.
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")


class SimMetrics:
    """The registry and every series the simulator exports."""

    def __init__(self, model_name: str, engine: str = "0") -> None:
        _disable_created_metrics()  # vLLM exports no ``*_created`` series either
        self.registry = CollectorRegistry()
        self.labels = {"model_name": model_name, "engine": engine}
        self._children: dict[int, Any] = {}
        names = list(self.labels)
        reg = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=reg)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*names, *extra], registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=reg)

        self.num_requests_waiting = gauge("vllm:num_requests_waiting", "Requests waiting.")
        self.num_requests_running = gauge("vllm:num_requests_running", "Requests running.")
        self.kv_cache_usage_perc = gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 0..1.")
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix-cache queries, in tokens."
        )
        self.prefix_cache_hits = counter("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens.")
        self.num_preemptions = counter("vllm:num_preemptions", "Preemptions (recompute).")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generation tokens produced.")
        self.request_success = counter(
            "vllm:request_success", "Finished requests.", ("finished_reason",)
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency.", _ITL_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end latency.", _LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds", "Time in the waiting queue.", _LATENCY_BUCKETS
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds", "Time in the prefill phase.", _LATENCY_BUCKETS
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds", "Time in the decode phase.", _LATENCY_BUCKETS
        )
        self.nixl_xfer_time = histogram(
            "vllm:nixl_xfer_time_seconds", "KV transfer time per NIXL pull.", _LATENCY_BUCKETS
        )
        self.nixl_bytes = histogram(
            "vllm:nixl_bytes_transferred", "Bytes per NIXL pull.", _BYTES_BUCKETS
        )
        self.nixl_failures = counter(
            "vllm:nixl_num_failed_transfers", "NIXL reads that failed (decode side)."
        )
        self.nixl_expired = counter(
            "vllm:nixl_num_kv_expired_reqs",
            "Prefilled requests whose KV lease expired before a decode worker read it.",
        )
        self.prompt_tokens_by_source = counter(
            "vllm:prompt_tokens_by_source",
            "Prompt tokens by where their KV came from.",
            ("source",),
        )

        self._export_all()

    def _export_all(self) -> None:
        """Create every series at zero, so a scrape sees all names from the start."""
        for metric in (
            self.num_requests_waiting, self.num_requests_running, self.kv_cache_usage_perc,
            self.prefix_cache_queries, self.prefix_cache_hits, self.num_preemptions,
            self.prompt_tokens, self.generation_tokens, self.ttft, self.itl, self.e2e,
            self.queue_time, self.prefill_time, self.decode_time, self.nixl_xfer_time,
            self.nixl_bytes, self.nixl_failures, self.nixl_expired,
        ):  # fmt: skip
            metric.labels(**self.labels)
        for reason in ("stop", "length", "abort", "error"):
            self.request_success.labels(**self.labels, finished_reason=reason)
        for source in PROMPT_SOURCES:
            self.prompt_tokens_by_source.labels(**self.labels, source=source)

    def for_engine(self, engine: str) -> SimMetrics:
        """The same series, labelled for another engine of this process (data parallelism)."""
        view = copy.copy(self)
        view.labels = {**self.labels, "engine": engine}
        view._children = {}
        view._export_all()
        return view

    def observe(self, histogram: Histogram, value: float) -> None:
        self._child(histogram).observe(value)

    def inc(self, counter: Counter, amount: float = 1.0) -> None:
        self._child(counter).inc(amount)

    def _child(self, metric: Any) -> Any:
        """The labelled series of ``metric``, looked up once (``labels()`` is slow per token)."""
        child = self._children.get(id(metric))
        if child is None:
            child = self._children[id(metric)] = metric.labels(**self.labels)
        return child

    def set_load(self, waiting: int, running: int, kv_usage: float) -> None:
        self._child(self.num_requests_waiting).set(waiting)
        self._child(self.num_requests_running).set(running)
        self._child(self.kv_cache_usage_perc).set(kv_usage)

    def prompt_sources(self, computed: int, cache_hit: int, transferred: int) -> None:
        """vLLM's breakdown of one request's prompt tokens: prefilled here, found in the local
        prefix cache, pulled from a prefill worker (they add up to the prompt)."""
        for source, tokens in zip(PROMPT_SOURCES, (computed, cache_hit, transferred), strict=True):
            if tokens:
                self.prompt_tokens_by_source.labels(**self.labels, source=source).inc(tokens)

    def success(self, reason: str) -> None:
        self.request_success.labels(**self.labels, finished_reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

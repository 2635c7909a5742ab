"""The operator's own metrics on ``/metrics``: what it does to the API server, live.

kopf's ``/healthz`` caches probe results for 10 s; these are read at scrape time from
the controller (no extra bookkeeping on the hot path): reconciles done, requests sent
to the API server by verb and kind, keys queued and in progress, keys failing.  A benchmark and
an e2e test read them to prove that an unchanged cluster costs no writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from disagg.controller.runtime import Controller


class ControllerCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.controller
        reconciles = CounterMetricFamily(
            "disagg_operator_reconciles", "Reconciles done (each reads only the cache)."
        )
        reconciles.add_metric([], c.stats["reconciles"])
        yield reconciles
        requests = CounterMetricFamily(
            "disagg_operator_api_requests",
            "Requests the operator sent to the Kubernetes API server (watches excluded), by "
            "verb and the kind of object they were about.",
            labels=["verb", "kind"],
        )
        for (verb, kind), count in sorted(c.kube.requests.items()):
            requests.add_metric([verb, kind], count)
        yield requests
        for name, help_, value in (
            ("disagg_operator_queue_depth", "Keys waiting to be reconciled.", len(c.queue)),
            ("disagg_operator_in_progress", "Keys being reconciled now.", c.queue.processing),
            ("disagg_operator_failing", "Objects whose last reconcile failed.", len(c.failures)),
        ):
            gauge = GaugeMetricFamily(name, help_)
            gauge.add_metric([], value)
            yield gauge


def serve(controller: Controller, address: str, port: int) -> None:
    """Serve ``/metrics`` in a background thread."""
    registry = CollectorRegistry()
    registry.register(ControllerCollector(controller))
    start_http_server(port, addr=address, registry=registry)

"""Bounded client load through the gateway, and a once-a-second trace of what autoscaling sees.

``ClosedLoopLoad`` keeps a fixed number of clients busy (each sends its next request when the
last one finished), so the load is bounded by construction; ``OpenLoopLoad`` sends at a fixed
rate whatever the answers take (a load *step*: a queue builds only while capacity is short, and
drains once it is not).  Every request's outcome is counted: the autoscaling test requires zero
failures.  ``Tracer`` records, every second, what
the client sent, the queues Prometheus holds (the gateway's per pool, vLLM's per pool) and the
replicas each role's HPA wants and the Deployment has ready; it reads the API with the
standard-library client (no kubectl process per sample on a 2-core machine).  The trace is what
``bench/autoscaling_plot.py`` draws for docs/autoscaling.md.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from testbed.cluster.apiclient import ApiClient
from testbed.cluster.config import Settings


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    inflight: int = 0
    latencies: list[float] = field(default_factory=list)


class ClosedLoopLoad:
    """``concurrency`` clients POSTing ``body`` to ``url`` back to back until ``stop()``."""

    def __init__(self, url: str, body: dict[str, Any], concurrency: int) -> None:
        """Each request's prompt is ``body["prompt"]`` behind a unique first word, so no prompt
        is served from the prefix cache (which would make the gateway skip prefill)."""
        self.url, self.body, self.concurrency = url, body, concurrency
        self._sent = 0
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.rate_per_s = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 180.0) -> LoadStats:
        """Stop sending; wait for the requests in flight to finish (they count)."""
        self._stop.set()
        self._thread.join(timeout)
        return self.stats

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.concurrency)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            await self._one(client)

    async def _one(self, client: httpx.AsyncClient) -> None:
        self.stats.inflight += 1
        start = time.monotonic()
        self._sent += 1
        body = {**self.body, "prompt": f"r{self._sent} {self.body['prompt']}"}
        try:
            response = await client.post(self.url, json=body)
            good = response.status_code == 200 and bool(response.json().get("choices"))
            error = "" if good else f"HTTP {response.status_code}: {response.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            good, error = False, f"{type(exc).__name__}: {exc}"
        finally:
            self.stats.inflight -= 1
        if good:
            self.stats.ok += 1
            self.stats.latencies.append(time.monotonic() - start)
        else:
            self.stats.failed += 1
            self.stats.errors.append(error)


class OpenLoopLoad(ClosedLoopLoad):
    """``rate_per_s`` requests a second, evenly spaced, whatever the answers take, until
    ``stop()``; in flight at most ``max_inflight`` (a bound, not the load)."""

    def __init__(
        self, url: str, body: dict[str, Any], rate_per_s: float, max_inflight: int = 200
    ) -> None:
        super().__init__(url, body, max_inflight)
        self.rate_per_s = rate_per_s

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            while not self._stop.is_set():
                if self.stats.inflight < self.concurrency:
                    task = asyncio.create_task(self._one(client))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                next_at += 1 / self.rate_per_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)


def prom_scalar(prometheus_url: str, promql: str) -> float | None:
    query = urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?{query}", timeout=2) as resp:
            result = json.load(resp)["data"]["result"]
    except (OSError, ValueError, KeyError):
        return None
    return float(result[0]["value"][1]) if result else None


@dataclass
class Sample:
    t: float
    clients: int
    completed: int
    failed: int
    gateway_queue: dict[str, float | None]
    vllm_waiting: dict[str, float | None]
    hpa_desired: dict[str, int | None]
    pool_replicas: dict[str, int | None]
    deployment_replicas: dict[str, int | None]
    """What the operator set on the Deployment: the HPA's desire after the guards."""
    ready: dict[str, int | None]
    busy_workers: dict[str, float | None] = field(default_factory=dict)
    """The gateway's admitted work in workers, as the HPA reads it (the adapter's 1 min mean)."""
    hpa_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per role, what the HPA last read per metric (its ``status.currentMetrics``)."""
    limited: str | None = None
    """The DisaggDeployment's ScalingLimited message while it is True."""


def quantity(value: str) -> float:
    """A Kubernetes quantity as the HPA writes metric values (``4``, ``4500m``, ``1k``)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6}
    if value and value[-1] in units:
        return float(value[:-1]) * units[value[-1]]
    return float(value)


def hpa_current_metrics(status: dict[str, Any]) -> dict[str, float]:
    """``status.currentMetrics`` as {metric name: per-replica value the HPA compared}."""
    out: dict[str, float] = {}
    for metric in status.get("currentMetrics") or []:
        kind = metric.get("type", "").lower()
        body = metric.get(kind) or {}
        name = body.get("metric", {}).get("name")
        current = body.get("current", {})
        value = current.get("averageValue") or current.get("value")
        if name and value is not None:
            out[name] = quantity(str(value))
    return out


class Tracer:
    """Samples the pipeline every ``interval`` seconds in a background thread."""

    def __init__(
        self,
        namespace: str,
        pools: dict[str, str],
        prometheus_url: str,
        load: ClosedLoopLoad | None = None,
        interval: float = 1.0,
        deployment: str | None = None,
    ) -> None:
        self.namespace, self.pools, self.prometheus_url = namespace, pools, prometheus_url
        self.deployment = deployment
        self.load, self.interval = load, interval
        self.api = ApiClient(Settings.from_env())
        self.samples: list[Sample] = []
        self.marks: dict[str, float] = {}
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        return time.monotonic() - self._t0

    def mark(self, name: str) -> None:
        self.marks[name] = round(self.now(), 2)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _get(self, path: str) -> dict[str, Any]:
        code, body = self.api.get(path)
        return body if code == 200 and isinstance(body, dict) else {}

    def sample(self) -> Sample:
        ns = self.namespace
        hpas = {
            h["metadata"]["name"]: h
            for h in self._get(
                f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers"
            ).get("items", [])
        }
        deps = {
            d["metadata"]["name"]: d
            for d in self._get(f"/apis/apps/v1/namespaces/{ns}/deployments").get("items", [])
        }
        pools = {
            p["metadata"]["name"]: p
            for p in self._get(f"/apis/disagg.dev/v1alpha1/namespaces/{ns}/inferencepools").get(
                "items", []
            )
        }
        sample = Sample(
            t=round(self.now(), 2),
            clients=self.load.stats.inflight if self.load else 0,
            completed=self.load.stats.ok if self.load else 0,
            failed=self.load.stats.failed if self.load else 0,
            gateway_queue={},
            vllm_waiting={},
            hpa_desired={},
            pool_replicas={},
            deployment_replicas={},
            ready={},
        )
        if self.deployment:
            dd = self._get(
                f"/apis/disagg.dev/v1alpha1/namespaces/{ns}/disaggdeployments/{self.deployment}"
            )
            for cond in dd.get("status", {}).get("conditions", []):
                if cond.get("type") == "ScalingLimited" and cond.get("status") == "True":
                    sample.limited = cond.get("message")
        for role, pool in self.pools.items():
            sample.gateway_queue[role] = prom_scalar(
                self.prometheus_url,
                f'sum(disagg_gateway_queue_depth{{namespace="{ns}",pool="{pool}"}})',
            )
            sample.vllm_waiting[role] = prom_scalar(
                self.prometheus_url,
                f'sum(vllm:num_requests_waiting{{namespace="{ns}",pod=~"{pool}-.+"}})',
            )
            sample.busy_workers[role] = prom_scalar(
                self.prometheus_url,
                f'sum(avg_over_time(disagg_gateway_busy_workers{{namespace="{ns}",pool="{pool}"}}[1m]))',
            )
            status = hpas.get(pool, {}).get("status", {})
            sample.hpa_metrics[role] = hpa_current_metrics(status)
            sample.hpa_desired[role] = status.get("desiredReplicas")
            sample.pool_replicas[role] = pools.get(pool, {}).get("spec", {}).get("replicas")
            sample.deployment_replicas[role] = deps.get(pool, {}).get("spec", {}).get("replicas")
            sample.ready[role] = deps.get(pool, {}).get("status", {}).get("readyReplicas", 0)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.samples.append(self.sample())
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def rescale_events(self) -> list[dict[str, Any]]:
        """The HPA controller's rescale events: each names the metric that decided it."""
        events = self._get(f"/api/v1/namespaces/{self.namespace}/events").get("items", [])
        return [
            {
                "hpa": e["involvedObject"]["name"],
                "message": e.get("message", ""),
                "time": e.get("lastTimestamp") or e.get("eventTime"),
            }
            for e in events
            if e.get("reason") == "SuccessfulRescale"
            and e.get("involvedObject", {}).get("kind") == "HorizontalPodAutoscaler"
        ]

    def dump(self, path: Path, **extra: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"marks": self.marks, "samples": [asdict(s) for s in self.samples], **extra}
        path.write_text(json.dumps(data, indent=1))

"""Single-function tests of the gateway's parts: config, discovery, pools, telemetry parsing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from disagg.gateway.cli import build_parser, resolve
from disagg.gateway.config import GatewayConfig, KubernetesDiscovery, PoolQueueConfig, load_config
from disagg.gateway.discovery import PodDiscovery, WorkerInfo, ready_workers
from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.pools import Pool, QueueFull, Ticket
from disagg.gateway.requests import decode_body, prefill_body
from disagg.gateway.routing.contracts import RoutingRequest
from disagg.gateway.routing.least_loaded import LeastLoadedScorer
from disagg.gateway.telemetry import parse_load
from disagg.gateway.upstream import KubeApiClient

# -- config ------------------------------------------------------------------------------------


def test_config_defaults_and_yaml(tmp_path: Path) -> None:
    default = GatewayConfig()
    assert default.selective.min_uncached_prompt_tokens > 0
    assert default.timeouts.keep_alive_expiry_seconds < 5
    path = tmp_path / "routing.yaml"
    path.write_text(
        "pools: {prefill: llama-prefill, decode: llama-decode}\n"
        "selective: {minUncachedPromptTokens: 512}\n"
        "routing:\n  prefill:\n    scorers: [{type: least-loaded, weight: 3}]\n"
        "discovery:\n  kubernetes:\n    namespace: ml\n"
        "    prefillSelector: disagg.dev/pool=llama-prefill\n"
        "    decodeSelector: disagg.dev/pool=llama-decode\n"
    )
    config = load_config(path)
    assert config.pools.decode == "llama-decode"
    assert config.selective.min_uncached_prompt_tokens == 512
    assert config.routing.prefill.scorers[0].weight == 3
    assert config.discovery.kubernetes is not None and config.discovery.kubernetes.port == 8000
    assert config.routing.decode.scorers  # untouched defaults stay


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"selective": {"minUncachedPromtTokens": 5}}, "Extra inputs"),
        ({"timeouts": {"keepAliveExpirySeconds": 5}}, "less than 5"),
        ({"routing": {"prefill": {"scorers": [{"type": "x", "weight": 0}]}}}, "greater than 0"),
        ({"discovery": {"static": {}, "kubernetes": {"namespace": "a", "prefillSelector": "x",
                                                     "decodeSelector": "y"}}}, "not both"),
    ],
)  # fmt: skip
def test_config_rejects_mistakes(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate(data)


def test_config_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[1]")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"selective": {"minUncachedPromptTokens": 9}}))
    args = build_parser().parse_args(
        ["--config", str(path), "--decode", "http://127.0.0.1:1/", "--min-uncached-prompt-tokens",
         "3"]
    )  # fmt: skip
    config, _ = resolve(args)
    assert config.selective.min_uncached_prompt_tokens == 3
    assert config.discovery.static is not None
    assert config.discovery.static.decode == ["http://127.0.0.1:1"]
    with pytest.raises(ValueError, match="no decode workers"):
        resolve(build_parser().parse_args(["--prefill", "http://127.0.0.1:2"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--decode", "localhost:8000"])


# -- leg bodies ---------------------------------------------------------------------------------


def test_prefill_and_decode_bodies_leave_the_original_untouched() -> None:
    original = {"model": "m", "prompt": "p", "stream": True, "min_tokens": 3,
                "stream_options": {"include_usage": True}, "max_tokens": 9}  # fmt: skip
    snapshot = json.loads(json.dumps(original))
    leg = prefill_body(original)
    assert leg["max_tokens"] == 1 and "max_completion_tokens" not in leg
    assert original == snapshot
    params = {"remote_block_ids": [[1]], "future_field": {"x": 1}}
    assert decode_body(original, params) == {**snapshot, "kv_transfer_params": params}


# -- discovery ----------------------------------------------------------------------------------


def _pod(
    name: str,
    ip: str | None = "10.0.0.1",
    ready: bool = True,
    deleting: bool = False,
    restarts: int = 0,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}", "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"name": "vllm", "restartCount": restarts}],
    }
    if ip:
        status["podIP"] = ip
    ports = [{"name": "http", "containerPort": 9000}, {"name": "kv-side-channel",
                                                      "containerPort": 5600}]  # fmt: skip
    return {"metadata": meta, "spec": {"containers": [{"name": "vllm", "ports": ports}]},
            "status": status}  # fmt: skip


def _urls(workers: list[WorkerInfo]) -> list[str]:
    return [w.url for w in workers]


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([_pod("a")], ["http://10.0.0.1:8000"]),
        ([_pod("a", ready=False)], []),
        ([_pod("a", deleting=True)], []),  # draining: no new requests
        ([_pod("a", ip=None)], []),
        ([_pod("a", ip="fd00::5")], ["http://[fd00::5]:8000"]),
        ([_pod("b", ip="10.0.0.2"), _pod("a")], ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]),
    ],
)
def test_ready_workers(pods: list[dict[str, Any]], expected: list[str]) -> None:
    assert _urls(ready_workers(pods, 8000)) == expected


def test_a_pod_s_labels_ports_and_restarts_reach_the_worker() -> None:
    labels = {"disagg.dev/kv-layout": "abc123", "disagg.dev/tensor-parallel": "2"}
    (worker,) = ready_workers([_pod("a", labels=labels, restarts=1)], 8000, port_name="http")
    assert worker == WorkerInfo("http://10.0.0.1:9000", "abc123", 2, 5600, "uid-a/1")
    (restarted,) = ready_workers([_pod("a", labels=labels, restarts=2)], 8000, port_name="http")
    assert restarted.incarnation != worker.incarnation


async def test_pod_discovery_lists_then_follows_the_watch() -> None:
    """A transport plays the API server: a list, then a watch that adds, drains and deletes."""
    first = _pod("pool-a")
    added = _pod("pool-b", ip="10.0.0.2")
    draining = _pod("pool-a", deleting=True)
    events = [{"type": "ADDED", "object": added}, {"type": "BOOKMARK", "object": {}},
              {"type": "MODIFIED", "object": draining},
              {"type": "DELETED", "object": added}]  # fmt: skip
    seen_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_requests.append(request)
        if request.url.params.get("watch") == "true":
            body = "".join(json.dumps(e) + "\n" for e in events)
            return httpx.Response(200, content=body.encode())
        return httpx.Response(200, json={"metadata": {"resourceVersion": "42"}, "items": [first]})

    token = Path(__file__)  # any readable file stands in for the token
    api = KubeApiClient("https://api.test", token_path=token, ca_path=None,
                        transport=httpx.MockTransport(handler))  # fmt: skip
    config = KubernetesDiscovery(namespace="ml", prefill_selector="role=prefill",
                                 decode_selector="role=decode", resync_seconds=30)  # fmt: skip
    changes: list[tuple[str, list[str]]] = []
    discovery = PodDiscovery(config, api)

    def record(role: str, workers: list[WorkerInfo]) -> None:
        changes.append((role, _urls(workers)))

    task = asyncio.create_task(discovery._follow("decode", "role=decode", record))
    for _ in range(200):
        if len(changes) >= 4:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await api.aclose()
    assert changes[:4] == [
        ("decode", ["http://10.0.0.1:8000"]),
        ("decode", ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]),
        ("decode", ["http://10.0.0.2:8000"]),  # draining pod dropped at once
        ("decode", []),
    ]
    listing, watch = seen_requests[0], seen_requests[1]
    assert listing.url.path == "/api/v1/namespaces/ml/pods"
    assert listing.url.params["labelSelector"] == "role=decode"
    assert watch.url.params["resourceVersion"] == "42"
    assert listing.headers["authorization"].startswith("Bearer ")


# -- pools ----------------------------------------------------------------------------------


def _pool(inflight: int = 1, queued: int = 1) -> Pool:
    queue = PoolQueueConfig(max_inflight_per_worker=inflight, max_queued=queued)
    return Pool("dec", "decode", queue, max_wait_seconds=0.3, metrics=GatewayMetrics())


def test_pool_sync_removes_series_of_workers_that_went_away() -> None:
    pool = _pool()
    pool.sync([WorkerInfo("http://a"), WorkerInfo("http://b")])
    pool.start("http://b")
    text = generate_latest(pool.metrics.registry).decode()
    assert 'worker="http://b"' in text
    assert pool.sync([WorkerInfo("http://a")]) == ["http://b"]
    text = generate_latest(pool.metrics.registry).decode()
    assert 'worker="http://b"' not in text and 'worker="http://a"' in text
    assert 'disagg_gateway_ready_workers{pool="dec",role="decode"} 1.0' in text


def test_a_finished_request_drains_the_scraped_queue_it_may_have_been_counted_in() -> None:
    """A scrape that caught our own request queued must not leave a phantom request on the
    worker after it finished (the least-loaded scorer would steer away from an idle worker
    until the next scrape)."""
    pool = _pool()
    pool.sync([WorkerInfo("http://a"), WorkerInfo("http://b")])
    pool.start("http://a")
    pool.workers["http://a"].waiting = 1.0  # the scrape saw it waiting in the engine
    assert LeastLoadedScorer().score(RoutingRequest("r", 16), pool.endpoints())["http://a"] == 0.0
    pool.finish("http://a")
    assert pool.workers["http://a"].waiting == 0.0
    assert LeastLoadedScorer().score(RoutingRequest("r", 16), pool.endpoints()) == {
        "http://a": 1.0,
        "http://b": 1.0,
    }
    pool.workers["http://b"].waiting = 3.0  # another client's queue: drains one per finish
    pool.start("http://b")
    pool.finish("http://b")
    pool.finish("http://b")  # a late duplicate finish never drives it below zero
    pool.finish("http://b")
    pool.finish("http://b")
    assert pool.workers["http://b"].waiting == 0.0 and pool.workers["http://b"].inflight == 0


async def test_pool_admission_is_bounded_times_out_and_exports_the_queue() -> None:
    pool = _pool(inflight=1, queued=1)
    pool.sync([WorkerInfo("http://a")])
    first, second = Ticket(), Ticket()
    await pool.admit(first)  # takes the only slot
    waiter = asyncio.create_task(pool.admit(second))
    await asyncio.sleep(0.01)
    assert pool.metrics.queue_depth.labels("dec", "decode")._value.get() == 1
    with pytest.raises(QueueFull, match="already queued"):
        await pool.admit(Ticket())
    pool.release(first)  # hands the slot to the waiter
    await waiter
    assert pool.admitted == 1
    assert pool.metrics.busy_workers.labels("dec", "decode")._value.get() == 1
    with pytest.raises(QueueFull, match="waited"):
        await pool.admit(Ticket())  # nobody releases: times out after max_wait_seconds
    pool.release(second)
    assert pool.admitted == 0 and pool.metrics.queue_depth.labels("dec", "decode")._value.get() == 0
    assert pool.metrics.rejected.labels("dec", "decode")._value.get() == 2


# -- telemetry ----------------------------------------------------------------------------------


def test_parse_load_sums_engines_and_ignores_the_rest() -> None:
    text = "\n".join([
        "# HELP vllm:num_requests_waiting Number of requests waiting.",
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0',
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0',
        'vllm:num_requests_running{engine="0",model_name="m"} 7.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5',
        'vllm:num_requests_waiting_total{engine="0"} 99',
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 12.0',
        "vllm:num_requests_running NaN",
    ])  # fmt: skip
    load = parse_load(text)
    assert (load.waiting, load.running, load.kv_cache_usage) == (5.0, 7.0, 0.5)
    assert parse_load("garbage\nvllm:num_requests_waiting{x} notanumber") == parse_load("")
    # The first line counts; CRLF line ends; a "}" inside a label value; a timestamp after the
    # value; a longer name sharing the prefix, a line without a value, a sample line without
    # a separator -- none of the last three counts.
    edge = "\r\n".join([
        "vllm:num_requests_waiting 1",
        'vllm:num_requests_waiting{reason="a}b"}\t2 1700000000',
        "vllm:num_requests_waitingX 40",
        "vllm:num_requests_waiting ",
        "vllm:num_requests_running{engine=\"0\"}3",
        "vllm:kv_cache_usage_perc 0.75",
    ])  # fmt: skip
    load = parse_load(edge)
    assert (load.waiting, load.running, load.kv_cache_usage) == (3.0, 0.0, 0.75)


def test_metric_updates_expose_what_prometheus_client_would() -> None:
    """The gateway's series take faster update paths (a bisect for histogram buckets, events
    relayed together observed at once); what /metrics says must not change."""
    import prometheus_client
    from prometheus_client import CollectorRegistry

    from disagg.gateway import metrics as ours

    bounds = (0.001, 0.01, 0.1, 1.0)
    series = []
    for module in (prometheus_client, ours):
        registry = CollectorRegistry()
        series.append((
            registry,
            module.Histogram("h_seconds", "h", ["k"], buckets=bounds, registry=registry),
            module.Counter("c", "c", ["k"], registry=registry),
            module.Gauge("g", "g", ["k"], registry=registry),
        ))  # fmt: skip
    for value in (0.0, 0.001, 0.0010001, 0.05, 1.0, 1.5, 1e9, -0.5, float("nan")):
        for _, histogram, counter, gauge in series:
            histogram.labels("x").observe(value)
            counter.labels("x").inc(abs(value) if value == value else 1)
            gauge.labels("x").set(value)
    # A relayed stream's gaps go through a tally, flushed in one go (events that arrived
    # together count as gaps of 0); a series of their own, so that the sum is compared too.
    gaps = (0.0, 0.0, 0.0, 0.002, 0.05, 3.0)
    for gap in gaps:
        series[0][1].labels("y").observe(gap)
    tally = ours.Tally(series[1][1].labels("y"))
    tally.add(0.0, 3)
    for gap in gaps[3:]:
        tally.add(gap)
    tally.flush()
    assert generate_latest(series[1][0]) == generate_latest(series[0][0])
    with pytest.raises(ValueError):
        series[1][1].observe(1.0)  # a parent with labels, as the library says
    with pytest.raises(ValueError):
        series[1][2].labels("x").inc(-1)


# -- the operator's rendering of this config ----------------------------------------------------


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).parents[1] / "examples").glob("disaggdeployment-*.yaml"))
)
def test_the_operators_configmap_is_a_valid_gateway_config(example: Path) -> None:
    """The ConfigMap the operator renders from each example must load in the gateway."""
    import yaml

    from disagg.api.disaggdeployment import DisaggDeployment
    from disagg.render.gateway import render_gateway_config

    obj = yaml.safe_load(example.read_text())
    spec = DisaggDeployment.model_validate(obj).spec
    rendered = render_gateway_config(obj["metadata"]["name"], "ns", spec)
    config = GatewayConfig.model_validate(json.loads(json.dumps(rendered)))
    assert config.discovery.kubernetes is not None
    assert config.selective.min_uncached_prompt_tokens > 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"selective": {"minUncachedPromtTokens": 1}},
         "bad config: selective.minUncachedPromtTokens: Extra inputs are not permitted"),
        ({"routing": {"prefill": {"scorers": [{"type": "nope"}]}}},
         "unknown scorer type 'nope' (known: kv-cache-usage, least-loaded, precise-prefix, "
         "prefix-affinity"),
    ],
)  # fmt: skip
def test_cli_refuses_a_bad_config_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any], message: str
) -> None:
    from disagg.gateway.cli import main

    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert main(["--config", str(path), "--decode", "http://127.0.0.1:9"]) == 2
    assert message in capsys.readouterr().err


# -- relay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buf", "cut"),
    [
        (b"", 0),
        (b"data: {", 0),
        (b"data: 1\n\n", 9),
        (b"data: 1\n\ndata: 2", 9),
        (b"data: 1\r\n\r\ndata: 2\r\n\r\n", 22),
        (b"data: 1\n\ndata: 2\n\ndata: [DO", 18),
    ],
)
def test_sse_event_boundaries(buf: bytes, cut: int) -> None:
    from disagg.gateway.relay import last_boundary

    assert last_boundary(buf) == cut


def test_sse_error_frame_is_an_openai_error_then_done() -> None:
    from disagg.gateway.relay import sse_error_frame

    first, second, rest = sse_error_frame("boom").split(b"\n\n")
    assert json.loads(first.removeprefix(b"data: "))["error"]["message"] == "boom"
    assert (second, rest) == (b"data: [DONE]", b"")


async def test_decode_pool_charges_prompt_and_output_against_its_kv_budget() -> None:
    queue = PoolQueueConfig(max_inflight_per_worker=8, max_inflight_tokens_per_worker=1000)
    pool = Pool("dec", "decode", queue, max_wait_seconds=0.05, metrics=GatewayMetrics())
    pool.sync([WorkerInfo("http://a")])
    first = Ticket(prompt_tokens=500, max_tokens=100)
    await pool.admit(first)
    assert pool.admission.admitted_tokens == 600
    with pytest.raises(QueueFull, match="waited"):  # 600 + 300 + 200 > 1000: it waits, bounded
        await pool.admit(Ticket(prompt_tokens=300, max_tokens=200))
    await pool.admit(Ticket(prompt_tokens=300, max_tokens=100))  # exactly fills the budget
    assert pool.admission.admitted_tokens == 1000 and pool.admitted == 2


# -- lazy deadlines ------------------------------------------------------------------------------


class _Expiries:
    """A deadline's ``expired`` callback that notes when it ran; ``first`` resolves at the first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.at: list[float] = []
        self.first: asyncio.Future[None] = loop.create_future()

    def __call__(self) -> None:
        self.at.append(self.loop.time())
        if not self.first.done():
            self.first.set_result(None)


async def test_a_lazy_deadline_expires_once_a_timeout_after_its_last_start() -> None:
    from disagg.gateway.deadline import LazyDeadline

    loop = asyncio.get_running_loop()
    fired = _Expiries(loop)
    deadline = LazyDeadline(loop, 0.2, fired)
    deadline.start()
    await asyncio.sleep(0.1)
    deadline.start()  # restarted: the first timer re-arms for the rest instead of firing
    restarted = loop.time()
    await asyncio.wait_for(fired.first, 5)
    assert fired.at[0] >= restarted + 0.2
    await asyncio.sleep(0.3)
    assert len(fired.at) == 1  # once: it lapses until the next start


async def test_a_stopped_lazy_deadline_never_expires_and_starts_again() -> None:
    from disagg.gateway.deadline import LazyDeadline

    loop = asyncio.get_running_loop()
    fired = _Expiries(loop)
    deadline = LazyDeadline(loop, 0.1, fired)
    deadline.start()
    deadline.stop()
    await asyncio.sleep(0.3)
    assert fired.at == []
    deadline.start()
    deadline.cancel()
    await asyncio.sleep(0.3)
    assert fired.at == []
    deadline.start()  # a stop or cancel is not for good: the next start arms it again
    began = loop.time()
    await asyncio.wait_for(fired.first, 5)
    assert fired.at[0] >= began + 0.1

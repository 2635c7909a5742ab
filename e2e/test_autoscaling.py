"""Autoscaling end to end on the real cluster: Prometheus -> prometheus-adapter -> an HPA per pool.

Nothing is faked between the client and the Deployments: simulated vLLM workers and the gateway
export their series, Prometheus (``testbed.monitoring``) scrapes them, prometheus-adapter serves
them through the aggregated custom/external metrics APIs, the kube-controller-manager's HPA
controller sets each InferencePool's ``/scale``, and the operator applies the DisaggDeployment's
guards before it sets the Deployments. Load goes only to the gateway pod's IP (the pod network).

The load test records a trace (``$DISAGG_CACHE/logs/autoscaling-trace.json``, or
``E2E_AUTOSCALING_TRACE``) that ``bench/autoscaling_plot.py`` turns into docs/autoscaling.png.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import test_operator as operator_tests
from e2e.operator_process import OperatorProcess, session_operator
from e2e.test_operator import DD, GATEWAY_IMAGE, IP, cond_is, small_resources
from testbed.cluster.config import Settings
from testbed.cluster.kubectl import Kubectl, condition
from testbed.monitoring import load as loadgen

pytestmark = pytest.mark.e2e

#: Simulated seconds per wall second: < 1 slows the simulated H100 down so that a handful of
#: clients saturate a worker without the 2-core machine doing much.
SPEEDUP = "0.2"
#: The load step's: a 1,500-token prefill takes ~0.75 s, so one prefill worker serves ~1.3
#: requests/s and ``STEP_RATE`` needs two (at ~75% each), at 2 requests/s through a 2-core machine.
STEP_SPEEDUP = "0.05"
STEP_RATE = 2.0
#: The role defaults (``render/autoscaling.py``) except a 30 s scale-down window instead of
#: 5-10 min, so that the run ends within minutes; scale-up is the default.
BEHAVIOR = {
    "scaleDown": {
        "stabilizationWindowSeconds": 30,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}],
    },
}


@pytest.fixture(scope="module")
def prometheus(cluster: Any) -> Iterator[str]:
    """The metrics pipeline: ``E2E_PROMETHEUS_URL`` (another cluster's), or testbed.monitoring's."""
    if url := os.environ.get("E2E_PROMETHEUS_URL"):
        yield url
        return
    if cluster.local is None:
        pytest.skip("set E2E_PROMETHEUS_URL (with an adapter installed) to run on another cluster")
    from testbed import monitoring

    started = not monitoring.is_up()
    monitoring.up()
    try:
        yield monitoring.PROMETHEUS_URL
    finally:
        if started and os.environ.get("E2E_KEEP_MONITORING") != "1":
            monitoring.down()


@pytest.fixture(scope="module")
def op(cluster: Any, crds: list[str], images: None, prometheus: str) -> Iterator[OperatorProcess]:
    """The operator with ``--prometheus-url``, for this module only.

    Not the session's ``operator`` fixture: that one would keep a cluster-wide operator running
    into e2e/test_chart.py, whose namespaced-mode test requires that nothing else reconciles.
    """
    log = Settings.from_env().cache / "logs" / "operator-e2e.log"
    shared = session_operator()
    if shared is not None or os.environ.get("E2E_OPERATOR", "process") == "pod":
        if shared is not None:
            shared.use_prometheus(prometheus)
        yield shared or OperatorProcess(Path(cluster.kubeconfig), log)
        return
    own = OperatorProcess(Path(cluster.kubeconfig), log, prometheus_url=prometheus)
    own.start()
    try:
        yield own
    finally:
        own.stop()


def a_disagg(name: str, **spec: Any) -> dict[str, Any]:
    """test_operator's DisaggDeployment, with simulated time slowed so that load builds up."""
    return operator_tests.a_disagg(name, SPEEDUP, **spec)


def gateway_url(kube: Kubectl, name: str) -> str:
    pods = kube.items("pods", f"disagg.dev/deployment={name},app.kubernetes.io/component=gateway")
    ready = [p for p in pods if cond_is(p, "Ready", "True") and p["status"].get("podIP")]
    assert ready, f"no ready gateway pod: {[p['status'].get('phase') for p in pods]}"
    return f"http://{ready[0]['status']['podIP']}:8000/v1/completions"


def prompt(words: int, tag: str) -> str:
    return " ".join(f"{tag}{i % 97}" for i in range(words))


def external_metric(kube: Kubectl, namespace: str, name: str, pool: str) -> list[dict[str, Any]]:
    raw = kube.kubectl(
        "get",
        "--raw",
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{name}"
        f"?labelSelector=pool%3D{pool}",
    )
    items: list[dict[str, Any]] = json.loads(raw).get("items", [])
    return items


def hpa_active(kube: Kubectl, name: str) -> bool:
    hpa = kube.get("hpa", name) or {}
    return cond_is(hpa, "ScalingActive", "True")


def warning_events(kube: Kubectl, reason: str) -> list[dict[str, Any]]:
    return [e for e in kube.items("events") if e.get("reason") == reason]


def trace_path() -> Path:
    default = Settings.from_env().cache / "logs" / "autoscaling-trace.json"
    return Path(os.environ.get("E2E_AUTOSCALING_TRACE", str(default)))


def flaps(samples: list[loadgen.Sample], role: str, start: float, end: float) -> list[str]:
    """Every change of the HPA's desire or the Deployment's replicas in ``[start, end]``."""
    changes: list[str] = []
    window = [s for s in samples if start <= s.t <= end]
    for key in ("pool_replicas", "deployment_replicas"):
        values = [(s.t, getattr(s, key)[role]) for s in window]
        for (_, before), (t, after) in itertools.pairwise(values):
            if before is not None and after is not None and before != after:
                changes.append(f"{role} {key} {before} -> {after} at {t:.1f} s")
    return changes


def test_a_load_step_queues_at_the_gateway_scales_prefill_holds_steady_and_scales_back(
    op: OperatorProcess, prometheus: str, kube: Kubectl, namespace: str
) -> None:
    """Open-loop step of ``STEP_RATE`` requests/s against one prefill worker that serves ~1/s.

    The gateway admits one prefill per worker (``--max-num-seqs 1``), so the backlog waits at
    the gateway: its queue is what the prefill HPA scales on (the HPA's own rescale event names
    the metric).  Two workers carry the step, the queue drains, and the busy-workers metric
    holds them there for the steady phase -- no replica change -- until the load stops; then
    prefill returns to 1 with no failed request.
    """
    auto = {"enabled": True, "minReplicas": 1, "maxReplicas": 2, "behavior": BEHAVIOR}
    kube.apply(
        operator_tests.a_disagg(
            "llm",
            STEP_SPEEDUP,
            prefill={
                "resources": small_resources(),
                "drain": {"timeoutSeconds": 5},
                "extraArgs": ["--max-num-seqs", "1"],
                "autoscaling": auto,
            },
            decode={
                "resources": small_resources(),
                "drain": {"timeoutSeconds": 5},
                "extraArgs": ["--max-num-seqs", "8"],
                "autoscaling": auto,
            },
            gateway={"image": GATEWAY_IMAGE, "cpu": "100m", "memory": "256Mi", "replicas": 1},
        )
    )
    pools = {"prefill": "llm-prefill", "decode": "llm-decode"}
    kube.wait_for_object(DD, "llm", lambda o: cond_is(o, "Ready", "True"), 240)
    # The pipeline answers before any load: both HPAs read their metrics through the adapter.
    for metric in ("disagg_gateway_queue_depth", "disagg_gateway_busy_workers"):
        kube.wait_for(
            lambda m=metric: external_metric(kube, namespace, m, "llm-prefill"),
            90,
            f"external metric {metric}{{pool=llm-prefill}} served by the adapter",
        )
    for pool in pools.values():
        kube.wait_for(lambda p=pool: hpa_active(kube, p), 90, f"HPA {pool} ScalingActive")

    url = gateway_url(kube, "llm")
    body = {"model": "llama", "prompt": prompt(1500, "w"), "max_tokens": 16}
    load = loadgen.OpenLoopLoad(url, body, STEP_RATE)
    tracer = loadgen.Tracer(namespace, pools, prometheus, load, deployment="llm")
    steady_s = float(os.environ.get("E2E_AUTOSCALING_STEADY_SECONDS", "60"))
    decided: dict[str, float] = {}
    at_decision: dict[str, Any] = {}
    scaled_up: dict[str, float] = {}
    drained_at: float | None = None
    tracer.start()
    try:
        tracer.mark("load_start")
        load.start()
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline:
            sample = tracer.sample()
            # The HPA writes the scale first and then its status, in which desiredReplicas and
            # the metrics it read come together: take the decision from that status, as a
            # sample taken between the two writes pairs the new scale with the last sync's read.
            if "prefill" not in decided and (sample.hpa_desired["prefill"] or 0) > 1:
                decided["prefill"] = sample.t
                at_decision = {
                    "gateway_queue": sample.gateway_queue["prefill"],
                    "hpa_metrics": sample.hpa_metrics["prefill"],
                    "busy_workers": sample.busy_workers["prefill"],
                    "vllm_waiting": sample.vllm_waiting["prefill"],
                }
            if "prefill" not in scaled_up and (sample.ready["prefill"] or 0) > 1:
                scaled_up["prefill"] = sample.t
                tracer.mark("prefill_ready")
            if scaled_up and drained_at is None and (sample.gateway_queue["prefill"] or 0) < 1:
                drained_at = sample.t
                tracer.mark("steady_start")
            if drained_at is not None and sample.t - drained_at >= steady_s:
                break
            time.sleep(1)
        tracer.mark("load_stop")
        stats = load.stop()
        tracer.mark("load_drained")
        assert scaled_up.get("prefill") is not None, f"prefill never scaled: {sample}"
        assert drained_at is not None, f"the gateway queue never drained: {sample}"

        def back_to_minimum() -> bool:
            dep = kube.get("deployment", pools["prefill"]) or {}
            return (
                dep.get("spec", {}).get("replicas") == 1
                and dep.get("status", {}).get("replicas") == 1
            )

        kube.wait_for(back_to_minimum, 240, "prefill back to 1 replica")
        tracer.mark("scaled_down")
        time.sleep(3)  # a few flat samples after the scale-down, for the plot
    finally:
        stats = load.stop()
        tracer.stop()
        events = tracer.rescale_events()
        steady = (tracer.marks.get("steady_start", 0.0), tracer.marks.get("load_stop", 0.0))
        steady_flaps = [c for r in pools for c in flaps(tracer.samples, r, *steady)]
        tracer.dump(
            trace_path(),
            scaled_up=scaled_up,
            decided=decided,
            at_decision=at_decision,
            steady_flaps=steady_flaps,
            rescale_events=events,
            rate_per_s=STEP_RATE,
            ok=stats.ok,
            failed=stats.failed,
            errors=stats.errors[:20],
        )
    up = [e for e in events if e["hpa"] == "llm-prefill" and "New size: 2" in e["message"]]
    print(
        f"\nprefill scale-up decided at {decided} s (at that moment {at_decision}), second "
        f"worker Ready at {scaled_up} s after the load step; steady phase {steady} with "
        f"{len(steady_flaps)} replica changes {steady_flaps}; {stats.ok} requests ok, "
        f"{stats.failed} failed; marks {tracer.marks}; rescale events {events}"
    )
    assert stats.failed == 0, stats.errors[:5]
    assert stats.ok > 0
    # The gateway queue is what made the HPA add a worker: its event names that metric, and the
    # value it read was above the target while the other metrics asked for no more than 1.
    assert up and "disagg_gateway_queue_depth" in up[0]["message"], events
    hpa_read = at_decision["hpa_metrics"]
    assert hpa_read.get("disagg_gateway_queue_depth", 0) > 4, at_decision
    assert hpa_read.get("disagg_gateway_busy_workers", 0) <= 1.1, at_decision
    assert steady_flaps == [], steady_flaps
    # Scrape 2 s + adapter relist 5 s + HPA sync 5 s: a decision within a minute, and a
    # simulated worker Ready well within two.
    assert decided["prefill"] < 60 and scaled_up["prefill"] < 120, (decided, scaled_up)
    dd = kube.wait_for_object(
        DD, "llm", lambda o: cond_is(o, "DisaggregationEffective", "True"), 90
    )
    assert cond_is(dd, "DisaggregationEffective", "True"), condition(dd, "DisaggregationEffective")


def test_ratio_guard_clamps_prefill_and_says_why(op: OperatorProcess, kube: Kubectl) -> None:
    """The prefill HPA holds 3 replicas (its minimum); P:D <= 1 with 1 decode clamps it to 1."""
    kube.apply(
        a_disagg(
            "llm",
            prefill={
                "resources": small_resources(),
                "drain": {"timeoutSeconds": 5},
                "replicas": 3,
                "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 4},
            },
            scaling={"prefillToDecodeRatio": {"min": 0, "max": 1}},
        )
    )
    dd = kube.wait_for_object(DD, "llm", lambda o: cond_is(o, "ScalingLimited", "True"), 120)
    message = condition(dd, "ScalingLimited")["message"]  # type: ignore[index]
    assert "prefill 3 -> 1: ratio 3.00 above max 1 with 1 decode" in message, message
    assert dd["status"]["prefill"]["requested"] == 3
    assert dd["status"]["prefill"]["desired"] == 1
    kube.wait_for_object("deployment", "llm-prefill", lambda d: d["spec"]["replicas"] == 1, 60)
    assert (kube.get(IP, "llm-prefill") or {})["spec"]["replicas"] == 3  # the HPA's desire stays
    hpa = kube.wait_for(lambda: kube.get("hpa", "llm-prefill"), 60, "prefill HPA")
    assert hpa["spec"]["minReplicas"] == 3
    events = kube.wait_for(
        lambda: warning_events(kube, "ScalingLimited"), 60, "ScalingLimited event"
    )
    assert any(
        e["type"] == "Warning" and "ratio 3.00 above max 1" in e["message"] for e in events
    ), events
    pool = kube.wait_for_object(
        IP,
        "llm-prefill",
        lambda o: (condition(o, "Degraded") or {}).get("reason") == "ScalingLimited",
    )
    assert "ratio 3.00 above max 1" in condition(pool, "Degraded")["message"]  # type: ignore[index]


def test_disaggregation_effective_turns_false_when_everything_goes_decode_only(
    op: OperatorProcess, kube: Kubectl
) -> None:
    """Selective threshold above every prompt: the gateway sends all to decode; status says so."""
    if op.proc is None and not os.environ.get("E2E_PROMETHEUS_URL"):
        pytest.skip("the in-cluster operator (E2E_OPERATOR=pod) needs its own --prometheus-url")
    kube.apply(
        a_disagg(
            "llm",
            gateway={
                "image": GATEWAY_IMAGE,
                "cpu": "100m",
                "memory": "256Mi",
                "routing": {"selective": {"minUncachedPromptTokens": 100000}},
            },
        )
    )
    kube.wait_for_object(DD, "llm", lambda o: cond_is(o, "Ready", "True"), 240)
    load = loadgen.ClosedLoopLoad(
        gateway_url(kube, "llm"), {"model": "llama", "prompt": prompt(300, "s"), "max_tokens": 4}, 2
    )
    load.start()
    try:
        kube.wait_for(lambda: load.stats.ok >= 10, 60, "10 requests served")
    finally:
        stats = load.stop()
    assert stats.failed == 0, stats.errors[:5]
    dd = kube.wait_for_object(
        DD, "llm", lambda o: cond_is(o, "DisaggregationEffective", "False"), 150
    )
    effective = condition(dd, "DisaggregationEffective") or {}
    assert effective.get("reason") == "MostlyDecodeOnly", effective
    assert dd["status"]["disaggregatedShare"] == 0

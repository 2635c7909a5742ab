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
BEHAVIOR = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Pods", "value": 4, "periodSeconds": 5}],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 15,
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
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


def test_pools_scale_up_under_load_and_back_down_without_failed_requests(
    op: OperatorProcess, prometheus: str, kube: Kubectl, namespace: str
) -> None:
    """Bounded load: prefill and decode each scale up from 1; load stops; both return to 1.

    The GPU budget (4) is below what both autoscalers want at the peak (2 prefill + 3 decode):
    the guard trims decode and says so in status and a Warning event, while clients see no error.
    """
    auto = {"enabled": True, "minReplicas": 1, "behavior": BEHAVIOR}
    kube.apply(
        a_disagg(
            "llm",
            prefill={
                "resources": small_resources(),
                "drain": {"timeoutSeconds": 5},
                "extraArgs": ["--max-num-seqs", "1"],
                "autoscaling": {**auto, "maxReplicas": 2},
            },
            decode={
                "resources": small_resources(),
                "drain": {"timeoutSeconds": 5},
                "extraArgs": ["--max-num-seqs", "4"],
                "autoscaling": {**auto, "maxReplicas": 3},
            },
            scaling={"gpuBudget": 4},
        )
    )
    pools = {"prefill": "llm-prefill", "decode": "llm-decode"}
    kube.wait_for_object(DD, "llm", lambda o: cond_is(o, "Ready", "True"), 240)
    # The pipeline answers before any load: both HPAs read their metrics through the adapter.
    kube.wait_for(
        lambda: external_metric(kube, namespace, "disagg_gateway_queue_depth", "llm-prefill"),
        90,
        "external metric disagg_gateway_queue_depth{pool=llm-prefill} served by the adapter",
    )
    for pool in pools.values():
        kube.wait_for(lambda p=pool: hpa_active(kube, p), 90, f"HPA {pool} ScalingActive")

    url = gateway_url(kube, "llm")
    body = {"model": "llama", "prompt": prompt(1500, "w"), "max_tokens": 48}
    load = loadgen.ClosedLoopLoad(url, body, concurrency=16)
    tracer = loadgen.Tracer(namespace, pools, prometheus, load, deployment="llm")
    scaled_up: dict[str, float] = {}
    decided: dict[str, float] = {}
    limited: list[str] = []
    tracer.start()
    try:
        tracer.mark("load_start")
        load.start()
        deadline = time.monotonic() + 240
        # At least this long (a longer run for the docs' plot: E2E_AUTOSCALING_LOAD_SECONDS).
        hold_until = time.monotonic() + float(os.environ.get("E2E_AUTOSCALING_LOAD_SECONDS", "0"))
        # Load until both pools have a second worker Ready and the budget guard has cut in.
        while time.monotonic() < deadline and (
            len(scaled_up) < 2 or not limited or time.monotonic() < hold_until
        ):
            sample = tracer.sample()
            for role in pools:
                if role not in decided and (sample.pool_replicas[role] or 0) > 1:
                    decided[role] = tracer.now()
                if role not in scaled_up and (sample.ready[role] or 0) > 1:
                    scaled_up[role] = tracer.now()
            if sample.limited:
                limited.append(sample.limited)
            time.sleep(1)
        tracer.mark("load_stop")
        stats = load.stop()
        tracer.mark("load_drained")
        assert set(scaled_up) == {"prefill", "decode"}, f"scaled up: {scaled_up}; {sample}"
        # Scrape 2 s + adapter relist 5 s + HPA sync 5 s: a decision within a minute, and a
        # simulated worker Ready well within two.
        assert max(decided.values()) < 60, decided
        assert max(scaled_up.values()) < 120, scaled_up
        assert limited and "exceed the budget of 4" in limited[0], limited
        kube.wait_for(lambda: warning_events(kube, "ScalingLimited"), 30, "ScalingLimited event")

        def back_to_minimum() -> bool:
            deps = {p: kube.get("deployment", p) or {} for p in pools.values()}
            return all(
                d.get("spec", {}).get("replicas") == 1 and d.get("status", {}).get("replicas") == 1
                for d in deps.values()
            )

        kube.wait_for(back_to_minimum, 180, "both pools back to 1 replica")
        tracer.mark("scaled_down")
        time.sleep(3)  # a few flat samples after the scale-down, for the plot
    finally:
        stats = load.stop()
        tracer.stop()
        tracer.dump(
            trace_path(),
            scaled_up=scaled_up,
            decided=decided,
            limited=limited[:1],
            ok=stats.ok,
            failed=stats.failed,
            errors=stats.errors[:20],
        )
    assert stats.failed == 0, stats.errors[:5]
    assert stats.ok > 0
    dd = kube.wait_for_object(DD, "llm", lambda o: cond_is(o, "ScalingLimited", "False"), 90)
    assert cond_is(dd, "DisaggregationEffective", "True"), condition(dd, "DisaggregationEffective")
    print(
        f"\nscale-up decided (pool spec.replicas > 1) at {decided}, new worker Ready at "
        f"{scaled_up} s after load start; {stats.ok} requests ok, {stats.failed} failed; "
        f"marks {tracer.marks}; guard: {limited[:1]}"
    )


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

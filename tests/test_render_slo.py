"""Flow-control limits and autoscaling targets the operator derives for a DisaggDeployment.

The gateway's prefill limits come from the engine flags a worker runs with; the HPA's targets
from the ``slo`` through the planner's models.  Each test reads the rendered objects, as the
cluster would get them.
"""

from __future__ import annotations

import json
import math
from typing import Any, get_args

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.slo import GPUPreset
from disagg.planner.hardware import GPUS, get_gpu
from disagg.planner.measured import MEASURED
from disagg.planner.memory import kv_capacity_tokens
from disagg.planner.models import MODELS
from disagg.planner.roofline import decode_step_time_s, prefill_time_s
from disagg.planner.sizing import KV_HEADROOM
from disagg.render.disaggdeployment import render_disaggdeployment_children
from disagg.render.slo import QUEUE_WAIT_SHARE

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def spec(**fields: Any) -> DisaggDeploymentSpec:
    return DisaggDeploymentSpec.model_validate({"model": {"name": MODEL}, **fields})


def children(s: DisaggDeploymentSpec) -> dict[tuple[str, str], dict[str, Any]]:
    objs = render_disaggdeployment_children("llm", "ns", s)
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def gateway_queue(s: DisaggDeploymentSpec) -> dict[str, Any]:
    config = children(s)[("ConfigMap", "llm-gateway")]["data"]["config.json"]
    queue: dict[str, Any] = json.loads(config)["queue"]
    return queue


def pool_metrics(s: DisaggDeploymentSpec, role: str) -> dict[str, float]:
    pool = children(s)[("InferencePool", f"llm-{role}")]["spec"]
    return {m["name"]: m["target"] for m in pool["autoscaling"].get("metrics", [])}


def test_prefill_limits_follow_the_flags_the_workers_run_with_shared_among_gateways() -> None:
    flags = spec(
        engine={"maxNumSeqs": 64, "extraArgs": ["--max-num-batched-tokens=2048"]},
        prefill={"extraArgs": ["--max-num-seqs", "3"]},  # the side's own flag wins
        gateway={"replicas": 2},
    )
    queue = gateway_queue(flags)
    assert queue["prefill"]["maxInflightPerWorker"] == 2  # ceil(3 / 2 gateways)
    assert queue["prefill"]["maxInflightTokensPerWorker"] == 1024
    assert queue["gatewayReplicas"] == 2
    assert queue["decode"] == {"maxQueued": 256}  # no KV size known: decode waits in vLLM
    defaults = gateway_queue(spec(gateway={"replicas": 1}))["prefill"]
    assert (defaults["maxInflightPerWorker"], defaults["maxInflightTokensPerWorker"]) == (256, 8192)


def test_decode_is_bounded_by_its_kv_cache_when_the_spec_says_how_large_it_is() -> None:
    exact = spec(decode={"extraArgs": ["--num-gpu-blocks-override", "1000"]})
    assert gateway_queue(exact)["decode"]["maxInflightTokensPerWorker"] == 8000  # 16 x 1000 / 2
    named = spec(slo={"ttftP99Ms": 2000, "gpu": "h100-sxm"}, gateway={"replicas": 1})
    model, gpu = MODELS["llama-3.1-8b"], get_gpu("h100-sxm")
    expected = int(kv_capacity_tokens(model, gpu, 1, 0.9) * KV_HEADROOM)
    assert gateway_queue(named)["decode"]["maxInflightTokensPerWorker"] == expected
    # the GPU unnamed: the planner's estimate could be far off, so no token bound
    assert (
        "maxInflightTokensPerWorker" not in gateway_queue(spec(slo={"ttftP99Ms": 2000}))["decode"]
    )


def test_ttft_objective_sets_the_prefill_queue_target_by_the_documented_arithmetic() -> None:
    s = spec(
        slo={"ttftP99Ms": 2000, "promptTokens": 1024},
        prefill={"autoscaling": {"enabled": True}},
    )
    service = prefill_time_s(MODELS["llama-3.1-8b"], get_gpu("h100-sxm"), 1024, 1)
    expected = math.floor(QUEUE_WAIT_SHARE * 2.0 / service) - 1
    metrics = pool_metrics(s, "prefill")
    assert metrics["gatewayQueueDepth"] == expected and expected > 1
    assert metrics["busyWorkers"] == 1  # the other defaults stay
    # a tighter objective asks for a shorter queue, never below 1
    tight = pool_metrics(spec(slo={"ttftP99Ms": 10}), "prefill")
    assert tight["gatewayQueueDepth"] == 1


def test_itl_objective_sets_decodes_running_target_capped_by_max_num_seqs() -> None:
    metrics = pool_metrics(spec(slo={"itlP99Ms": 12, "promptTokens": 1500}), "decode")
    target = metrics["runningRequests"]
    model, gpu = MODELS["llama-3.1-8b"], get_gpu("h100-sxm")

    def p99_step(mean: float) -> float:
        return decode_step_time_s(model, gpu, math.ceil(mean + 2.33 * math.sqrt(mean)), 1500)

    assert p99_step(target) <= 0.012 < p99_step(target + 1)
    capped = pool_metrics(spec(slo={"itlP99Ms": 1000}, engine={"maxNumSeqs": 8}), "decode")
    assert capped["runningRequests"] == 8
    assert metrics["kvCacheUsage"] == 0.8


def test_explicit_metrics_win_over_the_slo_and_an_unknown_model_keeps_defaults() -> None:
    own = [{"name": "gatewayQueueDepth", "target": 7}]
    s = spec(slo={"ttftP99Ms": 2000}, prefill={"autoscaling": {"enabled": True, "metrics": own}})
    assert pool_metrics(s, "prefill") == {"gatewayQueueDepth": 7}
    unknown = DisaggDeploymentSpec.model_validate(
        {"model": {"name": "someone/private-model"}, "slo": {"ttftP99Ms": 2000}}
    )
    assert pool_metrics(unknown, "prefill") == {}  # empty: the HPA renders the role defaults


def test_a_gpu_with_a_measured_preset_sets_targets_from_the_measurement() -> None:
    """slo.gpu h200: the targets follow vLLM as timed on an H200 (disagg.planner.measured),
    not the spec sheet's rules of thumb the unmeasured GPUs keep."""
    model, gpu = MODELS["llama-3.1-8b"], get_gpu("h200")
    measured = MEASURED["h200"]
    slo = {"ttftP99Ms": 500, "itlP99Ms": 7, "promptTokens": 1024, "gpu": "h200"}
    s = spec(slo=slo, prefill={"autoscaling": {"enabled": True}})
    service = prefill_time_s(model, gpu, 1024, 1, efficiency=measured)
    rule_of_thumb = prefill_time_s(model, gpu, 1024, 1)
    expected = math.floor(QUEUE_WAIT_SHARE * 0.5 / service) - 1
    assert pool_metrics(s, "prefill")["gatewayQueueDepth"] == expected
    assert expected != math.floor(QUEUE_WAIT_SHARE * 0.5 / rule_of_thumb) - 1

    def p99_step(mean: float) -> float:
        batch = math.ceil(mean + 2.33 * math.sqrt(mean))
        return decode_step_time_s(model, gpu, batch, 1024, efficiency=measured)

    target = pool_metrics(s, "decode")["runningRequests"]
    assert p99_step(target) <= 0.007 < p99_step(target + 1)


def test_slo_gpu_names_are_the_planners() -> None:
    assert set(get_args(GPUPreset)) == set(GPUS)

"""From latency objectives to the autoscalers' targets, with the planner's models.

**TTFT -> the prefill pool's gateway-queue target.**  The planner models a prefill replica as a
server of one prompt at a time (``planner/sizing.py``: M/M/c, service time = the roofline's
prefill time ``S`` of the prompt).  With ``q`` requests per replica waiting at the gateway, a
new arrival starts after the replicas worked through them: ``q * S`` (c servers drain the
``q * c`` waiters at ``c / S`` per second), then takes ``S`` itself, so its TTFT is about
``(q + 1) * S``.  The queue may use ``QUEUE_WAIT_SHARE`` of the objective before prefill scales up,
because the queue keeps growing for the minutes a new worker needs to start:

    target q = max(1, floor(QUEUE_WAIT_SHARE * ttftP99 / S) - 1)

e.g. Llama-3.1-8B on an H100 SXM, 1024-token prompts: S = 26 ms; ttftP99Ms 2000 -> 37 per
replica.  (The gateway's hold time per slot, ``disagg_gateway_prefill_seconds``, shows the real
``S`` once the pool runs: compare before trusting the roofline.)

**ITL -> the decode pool's running-requests target.**  A decode step of batch ``b`` takes the
roofline's ``step(b)``; the batch a replica runs around a mean ``m`` reaches ``m + Z99 * sqrt(m)``
at its 99th percentile (Poisson, the planner's ``Z99``).  The target is the largest mean batch
whose 99th-percentile step still meets the objective, at most ``--max-num-seqs``:

    target m = max m such that step(ceil(m + Z99 * sqrt(m))) <= itlP99

Both use the GPU's measured efficiencies where the planner has them (``slo.gpu: h200``: vLLM
0.26.0 timed on an H200, ``disagg.planner.measured``), as ``disagg plan`` and ``disagg sim`` do,
else the roofline's rules of thumb.  A model the planner does not know (no preset for
``model.name`` or ``model.architecture``) keeps the role defaults.
"""

from __future__ import annotations

import math

from disagg.api.common import ScalingMetric, ScalingMetricName
from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.api.slo import SLOSpec
from disagg.planner.hardware import DEFAULT_GPU, GPUSpec, get_gpu
from disagg.planner.measured import default_efficiency
from disagg.planner.models import MODELS, ModelSpec, preset_for_model_name
from disagg.planner.roofline import decode_step_time_s, prefill_time_s
from disagg.planner.sizing import Z99
from disagg.render.autoscaling import DEFAULT_METRICS
from disagg.render.capacity import engine_capacity

#: Share of the TTFT objective the gateway queue's wait may take before prefill scales up.
QUEUE_WAIT_SHARE = 0.5


def _model(spec: DisaggDeploymentSpec) -> ModelSpec | None:
    preset = spec.model.architecture or preset_for_model_name(spec.model.name)
    return MODELS.get(preset) if preset else None


def _gpu(slo: SLOSpec) -> GPUSpec:
    return get_gpu(slo.gpu or DEFAULT_GPU)


def prefill_queue_target(slo: SLOSpec, model: ModelSpec, tp: int) -> int | None:
    """Waiting requests per prefill replica at which TTFT nears its objective."""
    if slo.ttft_p99_ms is None:
        return None
    gpu = _gpu(slo)
    service = prefill_time_s(model, gpu, slo.prompt_tokens, tp, efficiency=default_efficiency(gpu))
    return max(1, math.floor(QUEUE_WAIT_SHARE * slo.ttft_p99_ms / 1000 / service) - 1)


def decode_running_target(slo: SLOSpec, model: ModelSpec, tp: int, max_num_seqs: int) -> int | None:
    """Mean running sequences per decode replica whose p99 step meets the ITL objective."""
    if slo.itl_p99_ms is None:
        return None
    gpu, limit = _gpu(slo), slo.itl_p99_ms / 1000
    efficiency = default_efficiency(gpu)

    def meets(mean: int) -> bool:
        batch = math.ceil(mean + Z99 * math.sqrt(mean))
        step = decode_step_time_s(model, gpu, batch, slo.prompt_tokens, tp, efficiency=efficiency)
        return step <= limit

    best = 1
    for mean in range(
        1, max_num_seqs + 1
    ):  # step time grows with the batch: stop at the first miss
        if not meets(mean):
            break
        best = mean
    return best


def slo_metrics(spec: DisaggDeploymentSpec, role: str) -> list[ScalingMetric] | None:
    """The ``role`` pool's metrics with targets from ``spec.slo``; None: keep the defaults."""
    model = _model(spec)
    if spec.slo is None or model is None:
        return None
    side = spec.prefill if role == "prefill" else spec.decode
    tp = side.parallelism.tensor
    metrics = list(DEFAULT_METRICS[role])
    name: ScalingMetricName
    if role == "prefill":
        target = prefill_queue_target(spec.slo, model, tp)
        name = "gatewayQueueDepth"
    else:
        target = decode_running_target(
            spec.slo, model, tp, engine_capacity(spec, role).max_num_seqs
        )
        name = "runningRequests"
    if target is None:
        return None
    return [m for m in metrics if m.name != name] + [ScalingMetric(name=name, target=target)]

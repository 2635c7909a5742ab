"""What one worker of a side batches at once, read from the command line it will run.

The gateway's flow control (``gateway/admission.py``) admits to a pool at most what its workers
batch, so that beyond saturation requests wait at the gateway -- where the prefill autoscaler
sees them -- instead of inside vLLM.  The numbers come from the same flags the worker gets:
``--max-num-seqs`` and ``--max-num-batched-tokens``, from the engine's fields or from
``extraArgs`` (the side's own after the shared ones, the last one winning, as vLLM's argument
parser does).  Unset, they are the simulator's defaults (256 sequences, 8192 tokens; vLLM's
vary with the GPU and the release, and the flags are how to pin them).

Decode is bounded by its KV cache instead: a decode worker runs what fits and vLLM queues the
rest cheaply (that queue is the decode HPA's signal), but KV promised beyond the cache means
preemption.  The gateway counts prompt plus ``max_tokens`` per request against the cache's
tokens when they are known: ``--num-gpu-blocks-override`` times the block size (exact), or the
planner's estimate for a model it knows on the GPU the ``slo`` names (``slo.gpu``, less the
planner's 10% headroom).  Otherwise decode keeps only the gateway's
request limit.

Each gateway replica admits its share (rounded up), so the gateways together send a worker
about what it batches, not that many times their count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from disagg.api.disaggdeployment import DisaggDeploymentSpec
from disagg.planner.hardware import get_gpu
from disagg.planner.memory import kv_capacity_tokens
from disagg.planner.models import MODELS, preset_for_model_name
from disagg.planner.sizing import KV_HEADROOM

#: The simulator's defaults for the two flags (its ``SimConfig``).
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


@dataclass(frozen=True)
class EngineCapacity:
    max_num_seqs: int
    max_num_batched_tokens: int


def _flag(args: list[str], flag: str) -> int | None:
    """The last value of ``flag`` in ``args`` (``--flag N`` or ``--flag=N``), if an integer."""
    found: int | None = None
    for i, arg in enumerate(args):
        value: str | None = None
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        if value is not None and value.strip().isdigit():
            found = int(value)
    return found


def engine_capacity(spec: DisaggDeploymentSpec, role: str) -> EngineCapacity:
    """The batch limits a ``role`` worker runs with."""
    side = spec.prefill if role == "prefill" else spec.decode
    args = [*spec.engine.extra_args, *side.extra_args]
    seqs = _flag(args, "--max-num-seqs") or spec.engine.max_num_seqs or DEFAULT_MAX_NUM_SEQS
    tokens = (
        _flag(args, "--max-num-batched-tokens")
        or spec.engine.max_num_batched_tokens
        or DEFAULT_MAX_NUM_BATCHED_TOKENS
    )
    return EngineCapacity(seqs, tokens)


def decode_kv_tokens(spec: DisaggDeploymentSpec) -> int | None:
    """Tokens of KV cache one decode worker holds, when the spec says or implies it."""
    args = [*spec.engine.extra_args, *spec.decode.extra_args]
    blocks = _flag(args, "--num-gpu-blocks-override")
    if blocks is not None:
        return blocks * spec.engine.block_size
    slo = spec.slo
    preset = spec.model.architecture or preset_for_model_name(spec.model.name)
    model = MODELS.get(preset) if preset else None
    if slo is None or slo.gpu is None or model is None:
        return None
    utilization = spec.engine.gpu_memory_utilization or 0.9
    tokens = kv_capacity_tokens(
        model, get_gpu(slo.gpu), spec.decode.parallelism.tensor, utilization
    )
    return int(tokens * KV_HEADROOM) if tokens > 0 else None


def decode_admission(spec: DisaggDeploymentSpec) -> dict[str, int]:
    """One gateway replica's decode token limit (the config's ``queue.decode``), if known."""
    tokens = decode_kv_tokens(spec)
    if tokens is None:
        return {}
    return {"maxInflightTokensPerWorker": math.ceil(tokens / max(1, spec.gateway.replicas))}


def prefill_admission(spec: DisaggDeploymentSpec) -> dict[str, int]:
    """One gateway replica's prefill limits (the config's ``queue.prefill``, camelCase)."""
    capacity = engine_capacity(spec, "prefill")
    replicas = max(1, spec.gateway.replicas)
    return {
        "maxInflightPerWorker": math.ceil(capacity.max_num_seqs / replicas),
        "maxInflightTokensPerWorker": math.ceil(capacity.max_num_batched_tokens / replicas),
    }

"""What one worker of a side batches at once, read from the command line it will run.

The gateway's flow control (``gateway/admission.py``) admits to a pool at most what its workers
batch, so that beyond saturation requests wait at the gateway -- where the prefill autoscaler
sees them -- instead of inside vLLM.  The numbers come from the same flags the worker gets:
``--max-num-seqs`` and ``--max-num-batched-tokens``, from the engine's fields or from
``extraArgs`` (the side's own after the shared ones, the last one winning, as vLLM's argument
parser does).  Unset, they are the simulator's defaults (256 sequences, 8192 tokens; vLLM's
vary with the GPU and the release, and the flags are how to pin them).

Each gateway replica admits its share (rounded up), so the gateways together send a worker
about what it batches, not that many times their count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from disagg.api.disaggdeployment import DisaggDeploymentSpec

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


def prefill_admission(spec: DisaggDeploymentSpec) -> dict[str, int]:
    """One gateway replica's prefill limits (the config's ``queue.prefill``, camelCase)."""
    capacity = engine_capacity(spec, "prefill")
    replicas = max(1, spec.gateway.replicas)
    return {
        "maxInflightPerWorker": math.ceil(capacity.max_num_seqs / replicas),
        "maxInflightTokensPerWorker": math.ceil(capacity.max_num_batched_tokens / replicas),
    }

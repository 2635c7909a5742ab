"""GPU memory: does the model fit at a tensor-parallel size, and how many KV tokens remain.

vLLM takes ``gpu_memory_utilization`` of each GPU, loads its shard of the weights, reserves
activation workspace, and gives the rest to the paged KV cache.  With tensor parallelism the KV
heads are split across ranks -- but only up to the number of KV heads: beyond that (and always
for MLA's single latent) every rank holds a full copy, which is why TP=8 on a model with 4 KV
heads buys less KV capacity than the GPU count suggests.
"""

from __future__ import annotations

from disagg.planner.hardware import GiB, GPUSpec
from disagg.planner.models import ModelSpec, kv_bytes_per_token

#: Per-GPU activation workspace vLLM's profiling run typically reserves (bytes).
ACTIVATION_RESERVE_BYTES = 2 * GiB

#: Tensor-parallel sizes the planner considers (one node's worth, then multi-node).
TP_CANDIDATES: tuple[int, ...] = (1, 2, 4, 8, 16)


def kv_shards(model: ModelSpec, tp: int) -> int:
    """Ranks the KV cache is split over (the rest replicate it)."""
    if model.is_mla:
        return 1
    return max(1, min(tp, model.num_kv_heads))


def kv_capacity_tokens(
    model: ModelSpec, gpu: GPUSpec, tp: int, gpu_memory_utilization: float = 0.9
) -> int:
    """Tokens of KV cache one replica of ``tp`` GPUs holds; <= 0 when the weights do not fit."""
    usable = gpu.memory_bytes * gpu_memory_utilization - ACTIVATION_RESERVE_BYTES
    free_per_gpu = usable - model.weight_bytes / tp
    if free_per_gpu <= 0:
        return 0
    per_token_per_gpu = kv_bytes_per_token(model) / kv_shards(model, tp)
    return int(free_per_gpu // per_token_per_gpu)


def fits(
    model: ModelSpec, gpu: GPUSpec, tp: int, tokens: int, gpu_memory_utilization: float = 0.9
) -> bool:
    """Whether a replica of ``tp`` GPUs holds the weights plus ``tokens`` of KV cache."""
    return kv_capacity_tokens(model, gpu, tp, gpu_memory_utilization) >= tokens

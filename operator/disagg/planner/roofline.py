"""Roofline timing: prefill is compute-bound, a decode step is memory-bound, KV moves at line rate.

Every time here is ``max(FLOPs / (peak x efficiency), bytes / (bandwidth x efficiency))`` plus
fixed overheads, for one forward pass of one replica of ``tp`` GPUs.  The efficiencies live in
one value object, :class:`Efficiency`, instead of being sprinkled through the formulas: the
defaults are conservative rules of thumb for vLLM on Hopper, and a calibration file measured on a
real GPU (``bench/calibrate_gpu.py``, loaded by :mod:`disagg.planner.calibration`) replaces them.
The simulator imports these same functions, so what the planner promises and what the simulated
engine does cannot drift apart.

Two effects matter and are modelled, because ignoring them is where naive sizing goes wrong:
attention's quadratic term in long prefills, and MoE decode reading more experts as the batch
grows (a batch of 1 reads ``k`` experts per layer, a batch of 256 reads nearly all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from disagg.planner.hardware import GPUSpec
from disagg.planner.models import ModelSpec, kv_bytes_per_token


@dataclass(frozen=True)
class Efficiency:
    """How close real kernels come to the spec sheet; dimensionless unless a unit is given."""

    compute: float = 0.60
    """Fraction of peak dense bf16 FLOP/s that the linear layers (GEMMs) of a forward reach."""
    attention: float = 0.45
    """Fraction of peak that (flash) attention's score and value products reach."""
    memory: float = 0.80
    """Fraction of HBM bandwidth that a decode step's weight and KV reads reach."""
    layer_overhead_s: float = 0.0
    """Fixed seconds per layer per forward (kernel launches, norms, small ops)."""
    step_overhead_s: float = 0.001
    """Fixed seconds per forward outside the layers (engine scheduling, sampling, logits)."""
    allreduce_latency_s: float = 8e-6
    """Fixed seconds per tensor-parallel all-reduce, on top of its bytes at interconnect speed."""
    sequence_overhead_s: float = 0.0
    """Fixed seconds per sequence in a step (sampling, detokenising and streaming its token)."""
    eager_layer_launch_s: float = 0.0
    """``--enforce-eager`` only: CPU seconds to launch one layer's kernels.  Kernels run while
    the CPU launches the next ones, so an eager step takes the slower of the GPU's work and
    ``layers x`` this; with CUDA graphs (vLLM's default) a decode step is one replay."""
    request_overhead_s: float = 0.0
    """Fixed seconds a request spends in the API server (parsing, input processing, the hop to
    the engine and back) outside engine steps: in TTFT, not in any step."""
    request_token_overhead_s: float = 0.0
    """The same per prompt token (validating and shipping the prompt's token ids)."""

    def __post_init__(self) -> None:
        for name in ("compute", "attention", "memory"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"efficiency {name} must be in (0, 1], got {value}")
        for name in (
            "layer_overhead_s",
            "step_overhead_s",
            "allreduce_latency_s",
            "sequence_overhead_s",
            "eager_layer_launch_s",
            "request_overhead_s",
            "request_token_overhead_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"efficiency {name} must be >= 0")


DEFAULT_EFFICIENCY = Efficiency()


def _check_tp(tp: int) -> None:
    if tp < 1:
        raise ValueError(f"tensor parallelism must be >= 1, got {tp}")


def routed_expert_params(model: ModelSpec) -> int:
    """Parameters in routed experts (read only when a token is routed to them); 0 if dense."""
    if not model.is_moe:
        return 0
    moe_layers = model.num_layers - model.first_dense_layers
    width = model.moe_intermediate_size or model.intermediate_size
    return moe_layers * model.num_experts * 3 * model.hidden_size * width


def weight_bytes_read(model: ModelSpec, tokens_in_batch: int) -> float:
    """Weight bytes one forward over ``tokens_in_batch`` tokens reads from HBM.

    The input embedding is a gather (only the batch's rows); the output head is read whole.  For
    an MoE the expected share of routed experts touched by ``n`` tokens routed top-``k`` of ``E``
    is ``1 - (1 - k/E)^n``.
    """
    params = float(model.num_params)
    if not model.tie_word_embeddings:
        params -= model.vocab_size * model.hidden_size
    routed = routed_expert_params(model)
    if routed:
        untouched = (1.0 - model.experts_per_token / model.num_experts) ** tokens_in_batch
        params -= routed * untouched
    return params * model.dtype_bytes


def linear_flops_per_token(model: ModelSpec) -> float:
    """GEMM FLOPs per token through every layer (2 per multiply-add), without the output head."""
    return 2.0 * (model.active_param_count - model.embedding_params)


def attention_flops(model: ModelSpec, query_tokens: int, key_tokens_each: float) -> float:
    """Score and value products for ``query_tokens`` queries over ``key_tokens_each`` keys each."""
    per_pair = 2.0 * model.num_attention_heads * (model.qk_dim + model.v_dim)
    return model.num_layers * per_pair * query_tokens * key_tokens_each


def _tp_comm_s(model: ModelSpec, gpu: GPUSpec, tokens: int, tp: int, eff: Efficiency) -> float:
    """Two ring all-reduces of the activations per layer (after attention and after the MLP)."""
    if tp == 1:
        return 0.0
    activation_bytes = tokens * model.hidden_size * 2
    per_allreduce = 2 * (tp - 1) / tp * activation_bytes / gpu.interconnect_bandwidth
    return 2 * model.num_layers * (per_allreduce + eff.allreduce_latency_s)


def _fixed_s(model: ModelSpec, eff: Efficiency) -> float:
    return eff.step_overhead_s + model.num_layers * eff.layer_overhead_s


def step_time_s(
    model: ModelSpec,
    gpu: GPUSpec,
    prefill_chunks: Sequence[tuple[int, int]] = (),
    decode_batch: int = 0,
    decode_context_tokens: float = 0.0,
    tp: int = 1,
    efficiency: Efficiency | None = None,
    eager: bool = False,
) -> float:
    """Seconds for one engine step: ``prefill_chunks`` (``(new_tokens, cached_tokens)`` per
    prefilling request) and one decode pass over ``decode_batch`` sequences of
    ``decode_context_tokens`` each, the way vLLM's unified scheduler runs them in one forward.

    Compute: linear FLOPs per token (plus the output head once per sequence that samples)
    and attention per piece; memory: the weights once (the pieces share them) plus every
    piece's KV reads and writes.  The slower of the two, plus all-reduces, is the GPU's work;
    an eager step takes at least its kernel launches (``eager_layer_launch_s``); then the
    step's fixed costs and each sequence's.
    """
    _check_tp(tp)
    eff = efficiency or DEFAULT_EFFICIENCY
    head = 2.0 * model.vocab_size * model.hidden_size
    flops = attention = kv_bytes = 0.0
    tokens = sequences = 0
    per_token_kv = kv_bytes_per_token(model)
    for new, cached in prefill_chunks:
        if new < 0 or cached < 0:
            raise ValueError("token counts must be >= 0")
        if new == 0:
            continue
        flops += new * linear_flops_per_token(model) + head
        attention += attention_flops(model, new, cached + (new + 1) / 2)
        kv_bytes += per_token_kv * (new + cached)
        tokens += new
        sequences += 1
    if decode_batch:
        if decode_batch < 1 or decode_context_tokens < 0:
            raise ValueError("decode needs batch_size >= 1 and context_tokens >= 0")
        flops += decode_batch * (linear_flops_per_token(model) + head)
        attention += attention_flops(model, decode_batch, decode_context_tokens)
        kv_bytes += per_token_kv * decode_batch * (decode_context_tokens + 1)
        tokens += decode_batch
        sequences += decode_batch
    if not tokens:
        return 0.0
    compute_s = (flops / eff.compute + attention / eff.attention) / (gpu.peak_bf16_flops * tp)
    memory_s = (weight_bytes_read(model, tokens) + kv_bytes) / (gpu.hbm_bandwidth * tp * eff.memory)
    gpu_s = max(compute_s, memory_s) + _tp_comm_s(model, gpu, tokens, tp, eff)
    if eager:
        gpu_s = max(gpu_s, model.num_layers * eff.eager_layer_launch_s)
    return gpu_s + _fixed_s(model, eff) + sequences * eff.sequence_overhead_s


def prefill_time_s(
    model: ModelSpec,
    gpu: GPUSpec,
    tokens: int,
    tp: int = 1,
    cached_tokens: int = 0,
    efficiency: Efficiency | None = None,
    eager: bool = False,
) -> float:
    """Seconds to prefill ``tokens`` new prompt tokens whose first ``cached_tokens`` prefix is
    already in the KV cache (prefix-cache hit), on one replica of ``tp`` GPUs: one step that
    prefills alone (:func:`step_time_s`).

    Compute: linear FLOPs ``2 x active non-embedding params x tokens`` plus causal attention over
    ``cached + new`` keys; memory: all weights once, the cached prefix's KV read and the new KV
    written.  The slower of the two wins.
    """
    _check_tp(tp)
    if tokens < 0 or cached_tokens < 0:
        raise ValueError("token counts must be >= 0")
    return step_time_s(model, gpu, [(tokens, cached_tokens)], 0, 0.0, tp, efficiency, eager)


def decode_step_time_s(
    model: ModelSpec,
    gpu: GPUSpec,
    batch_size: int,
    context_tokens: float,
    tp: int = 1,
    efficiency: Efficiency | None = None,
    eager: bool = False,
) -> float:
    """Seconds for one decode step of ``batch_size`` sequences of ``context_tokens`` each.

    Memory: weights (experts touched by the batch) plus every sequence's KV cache; compute:
    ``2 x active params`` per sequence plus attention over its context.  At serving batch sizes
    the memory side wins, which is why decode wants HBM bandwidth, not FLOPs.
    """
    _check_tp(tp)
    if batch_size < 1 or context_tokens < 0:
        raise ValueError("decode needs batch_size >= 1 and context_tokens >= 0")
    return step_time_s(model, gpu, (), batch_size, context_tokens, tp, efficiency, eager)


def request_overhead_s(prompt_tokens: int, efficiency: Efficiency | None = None) -> float:
    """Seconds a request's TTFT holds outside engine steps (the API server's share)."""
    eff = efficiency or DEFAULT_EFFICIENCY
    return eff.request_overhead_s + prompt_tokens * eff.request_token_overhead_s


def transfer_time_s(num_bytes: float, link_gbps: float, efficiency: float = 1.0) -> float:
    """Seconds to move ``num_bytes`` over a link of ``link_gbps`` gigabits per second (10^9 bit/s).

    At line rate by default (``efficiency=1``): 1,342,177,280 bytes at 100 Gb/s is 107 ms.
    """
    if link_gbps <= 0:
        raise ValueError(f"link speed must be > 0 Gb/s, got {link_gbps}")
    if not 0.0 < efficiency <= 1.0:
        raise ValueError(f"link efficiency must be in (0, 1], got {efficiency}")
    if num_bytes < 0:
        raise ValueError("byte count must be >= 0")
    return num_bytes * 8 / (link_gbps * 1e9 * efficiency)

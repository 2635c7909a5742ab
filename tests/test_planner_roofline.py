"""Roofline behaviour a capacity planner's user relies on: compute-bound prefill with a
quadratic attention term, memory-bound decode, MoE expert reads, TP, and input errors."""

from __future__ import annotations

import pytest

from disagg.planner import (
    Efficiency,
    decode_step_time_s,
    get_gpu,
    get_model,
    prefill_time_s,
    transfer_time_s,
)
from disagg.planner.roofline import weight_bytes_read

H100 = get_gpu("h100-sxm")
LLAMA8 = get_model("llama-3.1-8b")
LLAMA70 = get_model("llama-3.1-70b")
NO_OVERHEAD = Efficiency(step_overhead_s=0.0)


def test_prefill_is_compute_bound_and_superlinear_in_prompt_length() -> None:
    t4k = prefill_time_s(LLAMA8, H100, 4096, efficiency=NO_OVERHEAD)
    t8k = prefill_time_s(LLAMA8, H100, 8192, efficiency=NO_OVERHEAD)
    t32k = prefill_time_s(LLAMA8, H100, 32768, efficiency=NO_OVERHEAD)
    assert 2.0 < t8k / t4k < 2.3  # attention's quadratic term shows up...
    assert t32k / t8k > 4.5  # ...and dominates at long context
    # 2 x 7B non-embedding params x 4096 tokens at 60% of 989 TFLOP/s is about 97 ms.
    assert 0.09 < t4k < 0.12


def test_prefix_cache_hit_removes_most_of_the_prefill() -> None:
    full = prefill_time_s(LLAMA70, H100, 4096, tp=4)
    cached = prefill_time_s(LLAMA70, H100, 410, tp=4, cached_tokens=3686)
    assert cached < full / 5


def test_decode_is_memory_bound_at_small_batch() -> None:
    one = decode_step_time_s(LLAMA8, H100, 1, 1024, efficiency=NO_OVERHEAD)
    # Every weight once (the input embedding is a gather, not a full read).
    read = (LLAMA8.num_params - LLAMA8.vocab_size * LLAMA8.hidden_size) * LLAMA8.dtype_bytes
    weights_s = read / (H100.hbm_bandwidth * NO_OVERHEAD.memory)
    assert one == pytest.approx(weights_s, rel=0.05)
    eight = decode_step_time_s(LLAMA8, H100, 8, 1024, efficiency=NO_OVERHEAD)
    assert eight < one * 1.1  # eight streams for the price of one
    big = decode_step_time_s(LLAMA8, H100, 128, 2048, efficiency=NO_OVERHEAD)
    assert big > 2 * one  # 128 x 2048 tokens of KV (34 GB per step) outweigh 16 GB of weights


def test_more_hbm_bandwidth_means_faster_decode() -> None:
    h100 = decode_step_time_s(LLAMA70, H100, 32, 4096, tp=4)
    h200 = decode_step_time_s(LLAMA70, get_gpu("h200"), 32, 4096, tp=4)
    assert h200 < h100 * 0.8


def test_tensor_parallelism_splits_the_weight_reads() -> None:
    tp1 = decode_step_time_s(LLAMA8, H100, 16, 2048, tp=1)
    tp2 = decode_step_time_s(LLAMA8, H100, 16, 2048, tp=2)
    assert tp2 < tp1 * 0.65


def test_moe_decode_reads_more_experts_as_the_batch_grows() -> None:
    mixtral = get_model("mixtral-8x7b")
    one = weight_bytes_read(mixtral, 1)
    many = weight_bytes_read(mixtral, 256)
    assert one == pytest.approx(
        (mixtral.active_param_count - mixtral.vocab_size * mixtral.hidden_size) * 2, rel=0.02
    )
    assert many == pytest.approx(
        (mixtral.num_params - mixtral.vocab_size * mixtral.hidden_size) * 2, rel=0.001
    )


def test_calibrated_efficiency_changes_predictions() -> None:
    slow = Efficiency(compute=0.3, memory=0.4)
    assert prefill_time_s(LLAMA8, H100, 4096, efficiency=slow) > prefill_time_s(LLAMA8, H100, 4096)
    assert decode_step_time_s(LLAMA8, H100, 1, 512, efficiency=slow) > decode_step_time_s(
        LLAMA8, H100, 1, 512
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: transfer_time_s(1e9, 0),
        lambda: transfer_time_s(-1, 100),
        lambda: prefill_time_s(LLAMA8, H100, 100, tp=0),
        lambda: decode_step_time_s(LLAMA8, H100, 0, 100),
        lambda: Efficiency(compute=1.5),
        lambda: Efficiency(step_overhead_s=-1),
    ],
)
def test_bad_inputs_raise_value_error(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]

"""How long an engine step takes: the planner's roofline, applied to one continuous batch.

The simulator owns no performance arithmetic of its own; it asks :mod:`disagg.planner.roofline`
(prefill is compute-bound, decode is memory-bound) and composes the answer for a *mixed* step the
way vLLM's unified scheduler runs one: every prefill chunk in the step plus one decode pass over
the running streams.  Summing the two is what makes a long prompt stall every running stream of an
aggregated worker -- the interference disaggregation removes.  (It slightly over-counts the weight
read a mixed step shares; a real mixed step is a little faster.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from disagg.planner import roofline
from disagg.planner.calibration import load_calibration
from disagg.planner.catalog import get_model
from disagg.planner.hardware import GPUSpec, get_gpu
from disagg.planner.links import FABRIC, LinkProfile, get_link
from disagg.planner.measured import default_efficiency
from disagg.planner.models import DEFAULT_MODEL, MODELS, ModelSpec, kv_bytes_per_token


def resolve_model(model_arg: str, preset: str | None) -> ModelSpec:
    """The planner preset named by ``--sim-model-spec``, else the one the served model's name
    matches (``meta-llama/Llama-3.1-8B-Instruct`` -> ``llama-3.1-8b``), else the default."""
    if preset:
        return get_model(preset)
    try:
        return get_model(model_arg)
    except (LookupError, ValueError, OSError):
        return MODELS[DEFAULT_MODEL]


@dataclass(frozen=True)
class StepTimer:
    """Seconds (simulated) for the work the scheduler packs into one step."""

    model: ModelSpec
    gpu: GPUSpec
    tp: int = 1
    link_gbps: float = 100.0
    efficiency: roofline.Efficiency | None = None
    """Measured efficiencies (``--sim-calibration``, else the GPU's measured preset); the
    roofline's defaults when None."""
    eager: bool = False
    """``--enforce-eager``: no CUDA graphs, every step pays its kernel launches."""
    link: LinkProfile = FABRIC
    """``--sim-link``: how P->D KV transfers are timed (``disagg.planner.links``)."""

    @classmethod
    def build(
        cls,
        model_arg: str,
        preset: str | None,
        gpu: str,
        tp: int,
        link_gbps: float,
        calibration: str | None = None,
        eager: bool = False,
        link: str = "fabric",
    ) -> StepTimer:
        """``calibration``: a calibration file (``disagg.planner.calibration``) of ``gpu``;
        without one, the GPU's measured preset (``disagg.planner.measured``) if it has one."""
        spec = get_gpu(gpu)
        efficiency = default_efficiency(spec)
        if calibration:
            fitted = load_calibration(calibration)
            if fitted.gpu != spec.name:
                raise ValueError(f"{calibration} calibrates {fitted.gpu}, not {spec.name}")
            efficiency = fitted.efficiency
        model = resolve_model(model_arg, preset)
        return cls(model, spec, tp, link_gbps, efficiency, eager, get_link(link))

    def step_seconds(
        self,
        prefill_chunks: Sequence[tuple[int, int]],
        decode_batch: int,
        decode_context_tokens: int,
    ) -> float:
        """``prefill_chunks``: ``(new_tokens, tokens_already_in_cache)`` per prefilling request;
        ``decode_batch`` streams that each add one token over ``decode_context_tokens`` of KV in
        total."""
        per_sequence = decode_context_tokens / decode_batch if decode_batch else 0.0
        return roofline.step_time_s(
            self.model, self.gpu, prefill_chunks, decode_batch, per_sequence, tp=self.tp,
            efficiency=self.efficiency, eager=self.eager,
        )  # fmt: skip

    def request_seconds(self, prompt_tokens: int) -> float:
        """The API server's share of a request's TTFT (outside engine steps)."""
        return roofline.request_overhead_s(prompt_tokens, self.efficiency)

    def kv_bytes(self, num_tokens: int) -> int:
        return kv_bytes_per_token(self.model) * num_tokens

    def transfer_seconds(self, num_bytes: int) -> float:
        return self.link.transfer_s(num_bytes, self.link_gbps)

    def num_gpu_blocks(
        self, block_size: int, gpu_memory_utilization: float, kv_cache_bytes: int | None = None
    ) -> int:
        """KV capacity the way vLLM sizes it: ``--kv-cache-memory-bytes`` per GPU when given
        (vLLM then skips its memory profiling), else the memory budget minus the weights (per
        GPU, times tensor parallelism), divided by the bytes of one block."""
        per_block = kv_bytes_per_token(self.model) * block_size
        if kv_cache_bytes is not None:
            return max(1, kv_cache_bytes * self.tp // per_block)
        budget = self.gpu.memory_bytes * gpu_memory_utilization * self.tp
        free = budget - self.model.weight_bytes * 1.05  # activations and CUDA graphs take a bit
        return max(1, int(free // per_block))


__all__ = ["DEFAULT_MODEL", "StepTimer", "resolve_model"]

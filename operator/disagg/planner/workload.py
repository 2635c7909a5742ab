"""What the planner is asked: the workload, the service-level objectives and the deployment knobs.

Three value objects instead of one long argument list, because they change for different
reasons: the workload is measured from traffic, the SLOs are a product decision, the deployment
is what the platform team controls.  Each field documents its unit and default; validation
happens here, once, so the sizing code can assume sane numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from disagg.planner.errors import PlannerError

Transport = Literal["ib", "roce", "efa", "tcp"]
RDMA_TRANSPORTS: frozenset[str] = frozenset({"ib", "roce", "efa"})


@dataclass(frozen=True)
class Workload:
    """Traffic: Poisson arrivals; prompt and output lengths by mean and p99."""

    prompt_tokens: int = 4096
    """Mean prompt length, tokens."""
    output_tokens: int = 256
    """Mean generated tokens per request."""
    arrival_rate: float = 1.0
    """Requests per second, all replicas together."""
    prefix_hit_rate: float = 0.0
    """Share of prompt tokens already in a prefix cache (0..1)."""
    prompt_tokens_p99: int = 0
    """99th-percentile prompt length; 0 means the mean (a fixed length)."""
    output_tokens_p99: int = 0
    """99th-percentile output length; 0 means the mean."""

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise PlannerError("prompt and output tokens must be >= 1")
        if self.arrival_rate <= 0:
            raise PlannerError("arrival rate must be > 0 requests/s")
        if not 0.0 <= self.prefix_hit_rate < 1.0:
            raise PlannerError("prefix hit rate must be in [0, 1)")
        if self.prompt_tokens_p99 and self.prompt_tokens_p99 < self.prompt_tokens:
            raise PlannerError("prompt tokens p99 must be >= the mean")
        if self.output_tokens_p99 and self.output_tokens_p99 < self.output_tokens:
            raise PlannerError("output tokens p99 must be >= the mean")

    @property
    def prompt_p99(self) -> int:
        return self.prompt_tokens_p99 or self.prompt_tokens

    @property
    def output_p99(self) -> int:
        return self.output_tokens_p99 or self.output_tokens

    def cached_tokens(self, prompt: int) -> int:
        return int(prompt * self.prefix_hit_rate)


@dataclass(frozen=True)
class SLO:
    """Latency objectives, milliseconds at the 99th percentile."""

    ttft_p99_ms: float = 2000.0
    """Time to first token: queueing + prefill + KV transfer + first decode step."""
    itl_p99_ms: float = 50.0
    """Inter-token latency: one decode step, including any prefill it is stalled by."""

    def __post_init__(self) -> None:
        if self.ttft_p99_ms <= 0 or self.itl_p99_ms <= 0:
            raise PlannerError("SLOs must be > 0 ms")


@dataclass(frozen=True)
class Deployment:
    """The knobs a platform team sets.  Tensor parallelism 0 means "smallest that fits"."""

    link_gbps: float = 100.0
    """KV link speed per replica, Gb/s (RDMA NIC line rate)."""
    transport: Transport = "ib"
    """``ib``/``roce``/``efa`` (RDMA) or ``tcp`` (NIXL over UCX TCP, no GPUDirect)."""
    prefill_tp: int = 0
    decode_tp: int = 0
    aggregated_tp: int = 0
    gpu_memory_utilization: float = 0.90
    """vLLM's ``--gpu-memory-utilization``: the share of GPU memory for weights + KV cache."""
    max_num_seqs: int = 256
    """vLLM's ``--max-num-seqs``: the most sequences one decode step batches."""
    chunk_tokens: int = 0
    """Chunked-prefill budget per step in aggregated serving (``--max-num-batched-tokens``);
    0 means vLLM's default: 8192 on GPUs with >= 70 GiB, else 2048."""
    gpu_budget: int = 0
    """Most GPUs the deployment may use; 0 means no limit."""
    min_uncached_prompt_tokens: int = 256
    """Selective disaggregation threshold (the DisaggDeployment default): shorter uncached
    prompts skip the prefill pool."""

    def __post_init__(self) -> None:
        if self.link_gbps <= 0:
            raise PlannerError("link speed must be > 0 Gb/s")
        for name in ("prefill_tp", "decode_tp", "aggregated_tp"):
            tp = getattr(self, name)
            if tp < 0 or (tp and tp & (tp - 1)):
                raise PlannerError(f"{name.replace('_', ' ')} must be a power of two, got {tp}")
        if self.prefill_tp and self.decode_tp and self.decode_tp % self.prefill_tp:
            raise PlannerError(
                "decode tensor parallelism must be a multiple of prefill's (NIXL KV layout)"
            )
        if not 0.1 <= self.gpu_memory_utilization <= 1.0:
            raise PlannerError("GPU memory utilization must be in [0.1, 1]")
        if self.max_num_seqs < 1 or self.chunk_tokens < 0 or self.gpu_budget < 0:
            raise PlannerError("max-num-seqs must be >= 1; chunk tokens and GPU budget >= 0")

    @property
    def is_rdma(self) -> bool:
        return self.transport in RDMA_TRANSPORTS

"""Service-level objectives of a DisaggDeployment: where its autoscalers' targets come from.

An objective is what a user can state ("TTFT p99 under 2 s"); a metric target is what an HPA
needs ("scale prefill when 3 requests per worker wait at the gateway").  The operator derives
the second from the first with the planner's models (``render/slo.py`` has the arithmetic,
docs/autoscaling.md the worked example), so the inputs of that arithmetic -- the typical
prompt, the GPU -- are part of the objective.  Explicit ``autoscaling.metrics`` win over it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from disagg.api.base import ApiModel, cel, validations

#: GPU presets of the planner (``disagg.planner.hardware.GPUS``; a test keeps the two equal).
GPUPreset = Literal["h100-sxm", "h200", "a100", "l40s", "b200"]


class SLOSpec(ApiModel):
    """Latency objectives the autoscalers' targets are derived from."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.ttftP99Ms) || has(self.itlP99Ms)",
                "slo needs ttftP99Ms or itlP99Ms (or both)",
            ),
        )
    )

    ttft_p99_ms: int | None = Field(default=None, ge=1, le=3_600_000)
    """Time to first token, 99th percentile, in milliseconds: sets the prefill pool's target
    for the gateway queue (``gatewayQueueDepth``)."""
    itl_p99_ms: int | None = Field(default=None, ge=1, le=60_000)
    """Inter-token latency, 99th percentile, in milliseconds: sets the decode pool's target for
    running requests per worker (``runningRequests``)."""
    prompt_tokens: int = Field(default=1024, ge=1, le=10_000_000)
    """The typical prompt (tokens): its prefill time is what one queued request costs."""
    gpu: GPUPreset | None = None
    """The workers' GPU, as the planner names it: its roofline gives prefill and step times
    (``h100-sxm`` when omitted).  Named, it also bounds what the gateway sends a decode worker
    by the planner's estimate of its KV cache."""

"""What a client sees of one engine: TTFT, inter-token latency and the interference stall.

The roofline (:mod:`disagg.planner.roofline`) times engine steps; a client sees more and less
than one step.  TTFT is the request's time in the API server (``request_overhead_s`` plus a cost
per prompt token) and every step that prefills its prompt, in chunks of the step's token budget.
A streamed token follows every decode step, so the inter-token gap is one step.  And when a long
prompt arrives at an aggregated engine, vLLM's scheduler runs the running streams' decodes first
(one token each) and fills the rest of the budget with the prompt: each chunk's step carries the
decodes, and the longest of those steps is the stall every running stream sees.

These are the figures ``bench/fidelity.py`` measures on a real engine, so the calibration fit
(:func:`disagg.planner.calibration.fit_client_efficiency`) compares them one for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from disagg.planner.hardware import GPUSpec
from disagg.planner.models import ModelSpec
from disagg.planner.roofline import Efficiency, request_overhead_s, step_time_s


def chunks(prompt: int, budget: int, running: int = 0) -> list[tuple[int, int]]:
    """``(new, cached)`` per step that prefills ``prompt`` beside ``running`` decodes."""
    room = max(1, budget - running)
    return [(min(room, prompt - done), done) for done in range(0, prompt, room)]


def ttft_s(
    model: ModelSpec,
    gpu: GPUSpec,
    prompt: int,
    eff: Efficiency,
    eager: bool = False,
    budget: int = 8192,
) -> float:
    """A lone request's TTFT at the client."""
    steps = sum(step_time_s(model, gpu, [c], efficiency=eff, eager=eager)
                for c in chunks(prompt, budget))  # fmt: skip
    return request_overhead_s(prompt, eff) + steps


def itl_s(
    model: ModelSpec, gpu: GPUSpec, batch: int, context: float, eff: Efficiency, eager: bool = False
) -> float:
    """The gap between two tokens of ``batch`` streams of ``context`` tokens each."""
    return step_time_s(model, gpu, (), batch, context, efficiency=eff, eager=eager)


def stall_s(
    model: ModelSpec,
    gpu: GPUSpec,
    prompt: int,
    budget: int,
    running: int,
    context: float,
    eff: Efficiency,
    eager: bool = False,
) -> float:
    """The longest gap ``running`` streams see while ``prompt`` is prefilled beside them."""
    return max(
        step_time_s(model, gpu, [c], running, context, efficiency=eff, eager=eager)
        for c in chunks(prompt, budget, running)
    )


@dataclass(frozen=True)
class ClientPoint:
    """One figure measured at a client of a whole engine (``bench/fidelity.py``)."""

    figure: Literal["ttft", "itl", "stall"]
    tokens: int
    """TTFT and stall: the prompt's tokens; ITL: the batch size."""
    seconds: float
    eager: bool = False
    context: float = 0.0
    """ITL: mean context of the streams; stall: of the running streams."""
    budget: int = 8192
    """The step's token budget (``--max-num-batched-tokens``)."""
    running: int = 0
    """Stall: the streams already decoding."""
    label: str = ""

    def predict(self, model: ModelSpec, gpu: GPUSpec, eff: Efficiency) -> float:
        if self.figure == "ttft":
            return ttft_s(model, gpu, self.tokens, eff, self.eager, self.budget)
        if self.figure == "itl":
            return itl_s(model, gpu, self.tokens, self.context, eff, self.eager)
        return stall_s(model, gpu, self.tokens, self.budget, self.running, self.context, eff,
                       self.eager)  # fmt: skip

"""Measured efficiencies per GPU preset: what the planner and the simulator use by default.

A preset's spec sheet (:mod:`disagg.planner.hardware`) says what the card could do; what a real
engine does on it is a measurement.  Where we have one -- a whole vLLM engine timed at its client
and fitted by ``bench/gpu/fidelity_fit.py`` -- it lives here, as a literal, so that
``disagg plan --gpu h200`` and ``disagg sim --sim-gpu h200`` use it without a calibration file;
a test checks it against the committed ``docs/calibration-<gpu>.json`` it was copied from.  A GPU
without a measurement keeps the roofline's rules of thumb (:data:`DEFAULT_EFFICIENCY`), and an
explicit calibration file (``--calibration``, ``--sim-calibration``) overrides either.
"""

from __future__ import annotations

from disagg.planner.hardware import GPUSpec
from disagg.planner.roofline import DEFAULT_EFFICIENCY, Efficiency

#: vLLM 0.26.0 on an H200 (docs/gpu-runs/2026-12-01, docs/calibration-h200.json).
H200_VLLM_0_26 = Efficiency(
    compute=0.9277,
    attention=0.3032,
    memory=0.8493,
    layer_overhead_s=0.0,
    step_overhead_s=0.0009282,
    allreduce_latency_s=8e-06,
    sequence_overhead_s=9.938e-06,
    eager_layer_launch_s=0.0007162,
    request_overhead_s=0.009058,
    request_token_overhead_s=3.894e-06,
)
MEASURED: dict[str, Efficiency] = {"h200": H200_VLLM_0_26}
#: Where each measured preset comes from (shown by ``disagg plan``).
SOURCES: dict[str, str] = {"h200": "measured: vLLM 0.26.0 on an H200 (docs/calibration-h200.json)"}


def default_efficiency(gpu: GPUSpec) -> Efficiency:
    """The GPU's measured efficiencies, else the roofline's defaults."""
    return MEASURED.get(gpu.name, DEFAULT_EFFICIENCY)

"""Capacity planner: KV bytes per token, transfer time at link speed, P:D sizing, and the checks
that say whether disaggregating prefill from decode is worth it.

Pure arithmetic (no Kubernetes, no network, no files except where a caller hands one to
:func:`get_model` or the calibration loader).  The simulator and the operator's status import
the same functions the ``disagg plan`` CLI prints, so there is one timing model in the project.
"""

from disagg.planner.errors import PlannerError, UnknownPresetError
from disagg.planner.hardware import GPUS, GPUSpec, get_gpu
from disagg.planner.models import MODELS, ModelSpec, get_model, kv_bytes_per_token
from disagg.planner.roofline import (
    DEFAULT_EFFICIENCY,
    Efficiency,
    decode_step_time_s,
    prefill_time_s,
    transfer_time_s,
)

__all__ = [
    "DEFAULT_EFFICIENCY",
    "GPUS",
    "MODELS",
    "Efficiency",
    "GPUSpec",
    "ModelSpec",
    "PlannerError",
    "UnknownPresetError",
    "decode_step_time_s",
    "get_gpu",
    "get_model",
    "kv_bytes_per_token",
    "prefill_time_s",
    "transfer_time_s",
]

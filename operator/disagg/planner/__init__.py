"""Capacity planner: KV bytes per token, transfer time at link speed, P:D sizing, and the checks
that say whether disaggregating prefill from decode is worth it.

Pure arithmetic (no Kubernetes, no network, no files except where a caller hands one to
:func:`get_model` or the calibration loader).  The simulator and the operator's status import
the same functions the ``disagg plan`` CLI prints, so there is one timing model in the project.
"""

from disagg.planner.catalog import get_model
from disagg.planner.errors import PlannerError, UnknownPresetError
from disagg.planner.hardware import GPUS, GPUSpec, get_gpu
from disagg.planner.models import MODELS, ModelSpec, kv_bytes_per_token, preset_for_model_name
from disagg.planner.plan import Plan, make_plan
from disagg.planner.roofline import (
    DEFAULT_EFFICIENCY,
    Efficiency,
    decode_step_time_s,
    prefill_time_s,
    transfer_time_s,
)
from disagg.planner.workload import SLO, Deployment, Workload

__all__ = [
    "DEFAULT_EFFICIENCY",
    "GPUS",
    "MODELS",
    "SLO",
    "Deployment",
    "Efficiency",
    "GPUSpec",
    "ModelSpec",
    "Plan",
    "PlannerError",
    "UnknownPresetError",
    "Workload",
    "decode_step_time_s",
    "get_gpu",
    "get_model",
    "kv_bytes_per_token",
    "make_plan",
    "prefill_time_s",
    "preset_for_model_name",
    "transfer_time_s",
]

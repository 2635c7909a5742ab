"""Calibration: measured efficiencies for one GPU, and the fit that produces them.

The roofline's spec-sheet peaks are upper bounds; what a real layer reaches on a real card is a
measurement.  ``bench/calibrate_gpu.py`` times one Llama-3.1-8B-shaped decoder layer on a GPU
(prefill at several prompt lengths, decode at several batch sizes), and :func:`fit_efficiency`
chooses the :class:`Efficiency` that makes :mod:`disagg.planner.roofline` reproduce those timings
for a one-layer model.  A whole engine timed at its client (``bench/fidelity.py``: TTFT, inter-token
gaps, the interference stall, with and without CUDA graphs) is fitted by
:func:`fit_client_efficiency` against :mod:`disagg.planner.client`'s predictions instead; that
fit also sets the costs only a whole engine has (per step, per sequence, per request, eager kernel
launches).  The fit lives here, not in the benchmark, so it is pure, unit-tested, and
the error table the benchmark prints is computed by the very code the planner runs.

A calibration file is JSON (schema ``disagg.dev/calibration/v1``)::

    {"schema": ..., "gpu": "h100-sxm", "device": "NVIDIA H100 80GB HBM3",
     "efficiency": {"compute": .., "attention": .., "memory": .., "layer_overhead_s": ..,
                    "step_overhead_s": .., "allreduce_latency_s": ..},
     "microbenchmarks": {...}, "points": [...]}

Only ``gpu`` and ``efficiency`` are read back; the rest is the evidence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from disagg.planner.client import ClientPoint
from disagg.planner.errors import CalibrationError
from disagg.planner.hardware import GPUSpec, get_gpu
from disagg.planner.models import ModelSpec, estimate_params
from disagg.planner.roofline import (
    DEFAULT_EFFICIENCY,
    Efficiency,
    decode_step_time_s,
    prefill_time_s,
)

SCHEMA = "disagg.dev/calibration/v1"


@dataclass(frozen=True)
class Measurement:
    """One timed forward pass of the benchmark's layer stack."""

    kind: Literal["prefill", "decode"]
    tokens: int
    """Prefill: prompt tokens.  Decode: batch size (one new token per sequence)."""
    context: int
    """Decode: KV tokens each sequence attends to.  Prefill: cached prefix tokens (0)."""
    seconds: float


@dataclass(frozen=True)
class Calibration:
    gpu: str
    """Preset key of the GPU the measurements came from."""
    efficiency: Efficiency
    device: str = ""
    """The device name the benchmark saw (``torch.cuda.get_device_name``)."""


def layer_model(model: ModelSpec, layers: int = 1) -> ModelSpec:
    """``model`` cut down to ``layers`` decoder layers with no embedding or output head.

    This is what the benchmark times, so it is what the fit predicts.
    """
    bare = replace(model, name=f"{model.name}-x{layers}", num_layers=layers, vocab_size=0,
                   tie_word_embeddings=True, num_params=0, active_params=0)  # fmt: skip
    total, active = estimate_params(bare)
    return replace(bare, num_params=total, active_params=active if bare.is_moe else 0)


def predict(model: ModelSpec, gpu: GPUSpec, point: Measurement, eff: Efficiency) -> float:
    """What the roofline says ``point`` takes, in seconds."""
    if point.kind == "prefill":
        return prefill_time_s(model, gpu, point.tokens, cached_tokens=point.context, efficiency=eff)
    return decode_step_time_s(model, gpu, point.tokens, point.context, efficiency=eff)


def _loss(model: ModelSpec, gpu: GPUSpec, points: Sequence[Measurement], eff: Efficiency) -> float:
    """Mean squared log error: a 2x miss costs the same at 1 ms as at 1 s."""
    return sum(math.log(predict(model, gpu, p, eff) / p.seconds) ** 2 for p in points) / len(points)


#: Parameters fitted jointly in pairs (the pairs that trade off against each other), with the
#: range each may take: compute-side (GEMM, attention) and memory-side (bandwidth, fixed cost).
_PAIRS: tuple[tuple[tuple[str, float, float], tuple[str, float, float]], ...] = (
    (("compute", 0.05, 1.0), ("attention", 0.02, 1.0)),
    (("memory", 0.10, 1.0), ("layer_overhead_s", 0.0, 2e-3)),
)


def _grid(lo: float, hi: float, steps: int) -> list[float]:
    return [lo + (hi - lo) * i / steps for i in range(steps + 1)]


def _best_pair(
    model: ModelSpec,
    gpu: GPUSpec,
    points: Sequence[Measurement],
    eff: Efficiency,
    first: tuple[str, float, float],
    second: tuple[str, float, float],
) -> Efficiency:
    """Coarse 2-D grid over the whole range, then two finer grids around the best cell."""
    (n1, lo1, hi1), (n2, lo2, hi2) = first, second
    best = eff
    for _ in range(3):
        candidates = [
            replace(eff, **{n1: v1, n2: v2})
            for v1 in _grid(lo1, hi1, 24)
            for v2 in _grid(lo2, hi2, 24)
            if v1 > 0
        ]
        best = min(candidates, key=lambda e: _loss(model, gpu, points, e))
        span1, span2 = (hi1 - lo1) / 12, (hi2 - lo2) / 12
        v1, v2 = getattr(best, n1), getattr(best, n2)
        lo1, hi1 = max(first[1], v1 - span1), min(first[2], v1 + span1)
        lo2, hi2 = max(second[1], v2 - span2), min(second[2], v2 + span2)
    return best


def fit_efficiency(
    model: ModelSpec,
    gpu: GPUSpec,
    points: Sequence[Measurement],
    base: Efficiency = DEFAULT_EFFICIENCY,
    rounds: int = 3,
) -> Efficiency:
    """Grid search over compute, attention and memory efficiency and the per-layer overhead,
    minimising :func:`_loss`: each trading pair jointly, the pairs alternately.  ``model`` must
    be what was timed (see :func:`layer_model`); ``base`` supplies the fields not fitted (step
    overhead, all-reduce).  The fit runs with ``step_overhead_s = 0`` (the benchmark has no
    engine around the layers) and returns ``base.step_overhead_s`` in the result.
    """
    _check(points)
    eff = _fit_pairs(model, gpu, points, replace(base, step_overhead_s=0.0), rounds)
    return replace(eff, step_overhead_s=base.step_overhead_s)


#: What the client-side fit may move, and in what range.  ``layer_overhead_s`` is not among
#: them: at the client a per-layer cost and a per-step one are the same constant.
CLIENT_PARAMS: tuple[tuple[str, float, float], ...] = (
    ("compute", 0.05, 1.0),
    ("attention", 0.05, 1.0),
    ("memory", 0.10, 1.0),
    ("step_overhead_s", 0.0, 20e-3),
    ("sequence_overhead_s", 0.0, 100e-6),
    ("eager_layer_launch_s", 0.0, 2e-3),
    ("request_overhead_s", 0.0, 50e-3),
    ("request_token_overhead_s", 0.0, 20e-6),
)


def _client_loss(
    model: ModelSpec, gpu: GPUSpec, points: Sequence[ClientPoint], eff: Efficiency
) -> float:
    return sum(math.log(p.predict(model, gpu, eff) / p.seconds) ** 2 for p in points) / len(points)


def fit_client_efficiency(
    model: ModelSpec,
    gpu: GPUSpec,
    points: Sequence[ClientPoint],
    base: Efficiency = DEFAULT_EFFICIENCY,
    params: Sequence[tuple[str, float, float]] = CLIENT_PARAMS,
    rounds: int = 12,
) -> Efficiency:
    """The fit for figures of a whole engine at its client (:mod:`disagg.planner.client`),
    minimising the mean squared log error: coordinate descent first (one parameter at a time
    over a grid across its range, narrowing each round around the best value so far), then a
    Nelder-Mead simplex from there, since some parameters trade off against each other (the
    GEMMs' efficiency and the API server's cost per prompt token both scale with the prompt).
    ``base`` supplies everything not in ``params`` (``layer_overhead_s`` is zeroed: at the
    client it is indistinguishable from the step overhead, which is fitted)."""
    if not points:
        raise CalibrationError("no measurements to fit")
    if any(p.seconds <= 0 for p in points):
        raise CalibrationError("measured times must be > 0")
    eff = replace(base, layer_overhead_s=0.0)
    spans = {name: hi - lo for name, lo, hi in params}
    for _ in range(rounds):
        for name, lo, hi in params:
            here = getattr(eff, name)
            low, high = max(lo, here - spans[name] / 2), min(hi, here + spans[name] / 2)
            grid = [v for v in _grid(low, high, 40) if v > 0 or lo == 0.0]
            eff = min(
                (replace(eff, **{name: v}) for v in grid),
                key=lambda e: _client_loss(model, gpu, points, e),
            )
            spans[name] /= 1.6

    def at(x: Sequence[float]) -> Efficiency:
        values = {}
        for (name, lo, hi), v in zip(params, x, strict=True):
            values[name] = min(hi, max(lo, lo + v * (hi - lo)))
            if values[name] <= 0 and lo > 0:
                values[name] = lo
        return replace(eff, **values)

    start = [(getattr(eff, n) - lo) / (hi - lo) for n, lo, hi in params]
    best = _nelder_mead(lambda x: _client_loss(model, gpu, points, at(x)), start)
    return at(best)


def _nelder_mead(
    f: Callable[[Sequence[float]], float], start: Sequence[float], step: float = 0.05,
    iterations: int = 3000,
) -> list[float]:  # fmt: skip
    """The textbook simplex (reflect, expand, contract, shrink) on ``f``, from ``start``."""
    simplex = [list(start)] + [
        [v + (step if i == j else 0.0) for j, v in enumerate(start)] for i in range(len(start))
    ]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = sorted(range(len(simplex)), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < 1e-14:
            break
        centre = [sum(col) / (len(simplex) - 1) for col in zip(*simplex[:-1], strict=True)]
        worst = simplex[-1]

        def toward(
            t: float, worst: list[float] = worst, centre: list[float] = centre
        ) -> list[float]:
            return [c + t * (w - c) for c, w in zip(centre, worst, strict=True)]

        reflected = toward(-1.0)
        fr = f(reflected)
        if fr < values[0]:
            expanded = toward(-2.0)
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = toward(0.5)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                simplex = [simplex[0]] + [
                    [b + 0.5 * (x - b) for b, x in zip(simplex[0], point, strict=True)]
                    for point in simplex[1:]
                ]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[min(range(len(simplex)), key=values.__getitem__)]


def _check(points: Sequence[Measurement]) -> None:
    if not points:
        raise CalibrationError("no measurements to fit")
    if any(p.seconds <= 0 for p in points):
        raise CalibrationError("measured times must be > 0")


def _fit_pairs(
    model: ModelSpec, gpu: GPUSpec, points: Sequence[Measurement], eff: Efficiency, rounds: int
) -> Efficiency:
    """Each trading pair jointly, the pairs alternately, ``rounds`` times."""
    for _ in range(rounds):
        for first, second in _PAIRS:
            eff = _best_pair(model, gpu, points, eff, first, second)
    return eff


def error_table(
    model: ModelSpec, gpu: GPUSpec, points: Iterable[Measurement], calibrated: Efficiency
) -> list[dict[str, Any]]:
    """Per point: measured, predicted with spec-sheet defaults and with the calibration (ms),
    and the signed relative errors (predicted / measured - 1)."""
    rows = []
    default = replace(DEFAULT_EFFICIENCY, step_overhead_s=0.0)
    fitted = replace(calibrated, step_overhead_s=0.0)
    for p in points:
        pred_default = predict(model, gpu, p, default)
        pred_cal = predict(model, gpu, p, fitted)
        rows.append({
            "kind": p.kind, "tokens": p.tokens, "context": p.context,
            **compared(p.seconds, pred_default, pred_cal),
        })  # fmt: skip
    return rows


def compared(measured_s: float, default_s: float, calibrated_s: float) -> dict[str, float]:
    """A point's row figures: what was measured, both predictions, and their errors."""
    return {
        "measured_ms": measured_s * 1e3,
        "predicted_default_ms": default_s * 1e3,
        "predicted_calibrated_ms": calibrated_s * 1e3,
        "error_default": default_s / measured_s - 1,
        "error_calibrated": calibrated_s / measured_s - 1,
    }


def efficiency_from_mapping(data: Mapping[str, Any]) -> Efficiency:
    known = {f.name for f in fields(Efficiency)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CalibrationError(f"unknown efficiency fields: {', '.join(unknown)}")
    try:
        return Efficiency(**{k: float(v) for k, v in data.items()})
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"bad efficiency: {exc}") from None


def parse_calibration(data: Mapping[str, Any]) -> Calibration:
    if data.get("schema") != SCHEMA:
        raise CalibrationError(f"not a calibration file (schema must be {SCHEMA!r})")
    gpu = data.get("gpu")
    if not isinstance(gpu, str):
        raise CalibrationError("calibration file: 'gpu' must be a GPU preset name")
    eff = data.get("efficiency")
    if not isinstance(eff, Mapping):
        raise CalibrationError("calibration file: 'efficiency' must be an object")
    return Calibration(get_gpu(gpu).name, efficiency_from_mapping(eff), str(data.get("device", "")))


def calibration_document(cal: Calibration, **evidence: Any) -> dict[str, Any]:
    """The JSON document for ``cal``, with any evidence (microbenchmarks, points) appended."""
    return {"schema": SCHEMA, "gpu": cal.gpu, "device": cal.device,
            "efficiency": asdict(cal.efficiency), **evidence}  # fmt: skip


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; errors name the file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read calibration JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: expected a JSON object")
    try:
        return parse_calibration(data)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from None

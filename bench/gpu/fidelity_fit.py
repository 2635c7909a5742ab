"""The H200 calibration from a fidelity results JSON: which real points it is fitted on and
checked on, the fit, and its document.

The calibration is fitted on part of the real points and checked on the others (``FIT``,
``CHECK``): ``disagg.planner.calibration.fit_client_efficiency`` on TTFT, ITL p50 and the
interference stall, in CUDA-graph and eager mode, each predicted the way a client sees it
(``disagg.planner.client``).  It is written in the format of ``docs/calibration-h100.json``
(extended: the client-side fields, every point with its figure, and the link profile).
``fidelity_report`` turns the same results and this fit into docs/fidelity.md.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, replace
from typing import Any

from disagg.planner.calibration import (
    Calibration,
    calibration_document,
    compared,
    fit_client_efficiency,
)
from disagg.planner.catalog import get_model
from disagg.planner.client import ClientPoint
from disagg.planner.hardware import get_gpu
from disagg.planner.roofline import DEFAULT_EFFICIENCY, Efficiency

#: Points the calibration is fitted on, and the ones it is checked on (never fitted): TTFT and
#: ITL p50 in both modes (``graphs``: CUDA graphs, vLLM's default; ``eager``), the ITL of
#: 4096-token streams, the interference stall.  The p90 rows are all checks.
FIT = {
    "ttft": ("512", "2048", "8192"),
    "itl": ("1", "16", "64"),
    "itl_long": ("16",),
    "stall": ("graphs",),
}
CHECK = {
    "ttft": ("1024", "4096"),
    "itl": ("8", "32"),
    "itl_long": ("1", "8"),
    "stall": ("chunk2048",),
}
MODES = ("graphs", "eager")
#: The step budget of each interference engine: vLLM's default on a >= 70 GiB GPU, and 2048.
BUDGETS = {"graphs": 8192, "chunk2048": 2048}
RUNNING_STREAMS = 8
#: The issue's targets, as |error| bounds.
TARGETS = {"ttft": 0.10, "itl p50": 0.10, "itl p90": 0.15, "stall": 0.15}


def dig(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def median_of(values: list[Any] | None) -> float | None:
    clean = [v for v in values or [] if isinstance(v, int | float)]
    return statistics.median(clean) if clean else None


def client_points(
    results: dict[str, Any], which: dict[str, tuple[str, ...]], quantile: str = "p50"
) -> list[ClientPoint]:
    """The real side's figures named by ``which`` as the fit's points (ITL at ``quantile``)."""
    real = results.get("real") or {}
    points = []
    for mode in MODES:
        for length in which.get("ttft", ()) if quantile == "p50" else ():
            value = dig(real, "ttft", mode, length, "p50_ms")
            if value:
                label = f"TTFT p50 | {mode} | {length} tokens"
                points.append(
                    ClientPoint(
                        "ttft", int(length), value / 1e3, eager=mode == "eager", label=label
                    )
                )
        for batch in which.get("itl", ()):
            cell = dig(real, "itl", mode, batch) or {}
            if cell.get(f"{quantile}_ms"):
                points.append(ClientPoint(
                    "itl", int(batch), cell[f"{quantile}_ms"] / 1e3, eager=mode == "eager",
                    context=float(cell.get("context_tokens") or 256),
                    label=f"ITL {quantile} | {mode} | batch {batch}",
                ))  # fmt: skip
    for batch in which.get("itl_long", ()):
        cell = dig(real, "itl_long", "graphs", batch) or {}
        if cell.get(f"{quantile}_ms"):
            points.append(ClientPoint(
                "itl", int(batch), cell[f"{quantile}_ms"] / 1e3,
                context=float(cell.get("context_tokens") or 4224),
                label=f"ITL {quantile}, 4096-token prompts | graphs | batch {batch}",
            ))  # fmt: skip
    for engine in which.get("stall", ()) if quantile == "p50" else ():
        cell = dig(real, "interference", engine) or {}
        if not cell.get("stall_p50_ms"):
            continue
        # The running streams' context when the long prompt arrives: 128 prompt tokens and
        # ~0.8 s of decoding at the baseline ITL (bench/fidelity.py's interference()).
        itl = median_of([r.get("baseline_itl_p50_ms") for r in cell.get("rounds", [])]) or 5.0
        points.append(ClientPoint(
            "stall", 8192, cell["stall_p50_ms"] / 1e3, budget=BUDGETS[engine],
            running=RUNNING_STREAMS, context=128 + 800 / itl,
            label=f"interference stall | {engine} | budget {BUDGETS[engine]}",
        ))  # fmt: skip
    return points


def _rounded(eff: Efficiency) -> Efficiency:
    """Four significant digits: what docs/calibration-h200.json and the preset both hold."""
    return Efficiency(**{k: float(f"{v:.4g}") for k, v in asdict(eff).items()})


def calibrate(
    results: dict[str, Any], device: str = "", fitted: Efficiency | None = None
) -> tuple[Calibration, list[dict[str, Any]]]:
    """Fit on ``FIT``; every point of ``FIT`` and ``CHECK`` (and the p90s) with the roofline's
    defaults and with the fit, each against the real engine at its client.  With ``fitted``
    (a fit made on an earlier run), nothing is fitted: every point of ``results`` checks it."""
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h200")
    earlier = fitted is not None
    if fitted is None:
        fitted = _rounded(fit_client_efficiency(model, gpu, client_points(results, FIT)))
    table = []
    for role, which, quantile in (
        ("fit", FIT, "p50"), ("check", CHECK, "p50"), ("check", FIT, "p90"), ("check", CHECK, "p90")
    ):  # fmt: skip
        role = "check" if earlier else role
        for point in client_points(results, which, quantile):
            before = point.predict(model, gpu, DEFAULT_EFFICIENCY)
            after = point.predict(model, gpu, fitted)
            figure, engine, where = point.label.split(" | ")
            table.append({
                "role": role, "figure": figure, "engine": engine, "point": where,
                "kind": point.figure, "tokens": point.tokens, "context": point.context,
                **compared(point.seconds, before, after),
                "target": TARGETS["itl p90" if "p90" in figure else
                                  "itl p50" if point.figure == "itl" else point.figure],
            })  # fmt: skip
    return Calibration("h200", fitted, device), table


#: What the eager refit may move: the eager kernel launches alone (every other constant is
#: graph mode's, fitted on graph-mode points, and no eager figure informs them better).
EAGER_PARAMS = (("eager_layer_launch_s", 0.0, 2e-3),)


def refit_eager(results: dict[str, Any], base: Efficiency) -> tuple[Efficiency, list[str]]:
    """``base`` with its eager constant fitted on ``results``' eager ``FIT`` points (TTFT p50
    and ITL p50); returns it and the labels of the points it was fitted on."""
    real = {k: {"eager": v["eager"]} for k, v in (results.get("real") or {}).items()
            if k in ("ttft", "itl") and isinstance(v, dict) and "eager" in v}  # fmt: skip
    points = client_points({"real": real}, FIT)
    if not points:
        raise ValueError("no eager points to fit")
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h200")
    fitted = fit_client_efficiency(model, gpu, points, base, EAGER_PARAMS)
    return _rounded(replace(fitted, layer_overhead_s=base.layer_overhead_s)), [
        p.label for p in points
    ]


def calibration_json(
    cal: Calibration, table: list[dict[str, Any]], link: dict[str, Any] | None = None
) -> dict[str, Any]:
    return calibration_document(
        cal,
        benchmark={
            "what": "whole vLLM 0.26.0 engine at its client (bench/fidelity.py), "
            "fitted by disagg.planner.calibration.fit_client_efficiency",
            "model_shape": "llama-3.1-8b",
            "fit": FIT,
            "check": CHECK,
        },
        link_ucx_tcp_emulation=link or {},
        points=table,
    )

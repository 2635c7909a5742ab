"""docs/fidelity.md, its plot and the H200 calibration, from a fidelity results JSON.

Pure functions from the results (``bench/fidelity.py``) to rows, a calibration and Markdown; the
plot is the only part that needs matplotlib.  The figures compared, real against simulated, are
the issue's: TTFT p50 per prompt length, ITL p50/p90 per batch size and context, the interference
stall, in CUDA-graph and eager mode, and the P/D handoff.  Error = simulated / real - 1.

The calibration is fitted on part of the real points and checked on the others (``FIT``,
``CHECK``): ``disagg.planner.calibration.fit_engine_efficiency`` on the ``graphs`` engine's TTFT
and ITL p50, with the per-layer overhead taken from the layer calibration of the same GPU when the
run has one.  It is written in the format of ``docs/calibration-h100.json``.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from disagg.planner.calibration import (
    Calibration,
    Measurement,
    calibration_document,
    fit_engine_efficiency,
    predict,
)
from disagg.planner.catalog import get_model
from disagg.planner.hardware import get_gpu
from disagg.planner.roofline import DEFAULT_EFFICIENCY, Efficiency

#: Points the calibration is fitted on, and the ones it is checked on (never fitted).
FIT = {"ttft": ("512", "2048", "8192"), "itl": ("1", "16", "64"), "itl_long": ("8", "16")}
CHECK = {"ttft": ("1024", "4096"), "itl": ("8", "32"), "itl_long": ("1",)}
#: The issue's targets, as |error| bounds.
TARGETS = {"ttft": 0.10, "itl p50": 0.10, "itl p90": 0.15, "stall": 0.15}


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _median(values: list[Any] | None) -> float | None:
    clean = [v for v in values or [] if isinstance(v, int | float)]
    return statistics.median(clean) if clean else None


def rows(
    results: dict[str, Any], sides: tuple[str, ...] = ("sim", "sim_calibrated")
) -> list[dict[str, Any]]:
    """One row per figure and point: the real value, each simulated side's, their errors."""
    real = results.get("real") or {}
    out: list[dict[str, Any]] = []

    def add(figure: str, engine: str, point: str, target: str | None, *path: str) -> None:
        row: dict[str, Any] = {
            "figure": figure,
            "engine": engine,
            "point": point,
            "target": target,
            "real": _get(real, *path),
        }
        for side in sides:
            value = _get(results.get(side) or {}, *path)
            row[side] = value
            if isinstance(value, int | float) and isinstance(row["real"], int | float):
                row[f"{side}_error"] = value / row["real"] - 1 if row["real"] else None
        out.append(row)

    for engine in ("graphs", "eager"):
        for length in ("512", "1024", "2048", "4096", "8192"):
            add("TTFT p50 ms", engine, f"{length} tokens", "ttft", "ttft", engine, length, "p50_ms")
        for batch in ("1", "8", "16", "32", "64"):
            for q, target in (("p50", "itl p50"), ("p90", "itl p90")):
                add(
                    f"ITL {q} ms", engine, f"batch {batch}", target, "itl", engine, batch, f"{q}_ms"
                )
    for batch in ("1", "8", "16"):
        for q, target in (("p50", "itl p50"), ("p90", "itl p90")):
            add(
                f"ITL {q} ms, 4096-token prompts",
                "graphs",
                f"batch {batch}",
                target,
                "itl_long",
                "graphs",
                batch,
                f"{q}_ms",
            )
    for engine, budget in (("graphs", "default budget"), ("chunk2048", "budget 2048")):
        add(
            "interference stall ms", engine, budget, "stall", "interference", engine, "stall_p50_ms"
        )
    for length in ("512", "2048", "8192"):
        for label, key in (
            ("P/D: D TTFT incl. pull ms", "d_ttft_ms"),
            ("P/D: D local-prefill TTFT ms", "d_local_ttft_ms"),
            ("P/D: prefill leg ms", "p_ms"),
        ):
            row_values = {
                s: _median(_get(results.get(s) or {}, "handoff", "p8/d8", length, key))
                for s in ("real", *sides)
            }
            row = {
                "figure": label,
                "engine": "p8/d8",
                "point": f"{length} tokens",
                "target": None,
                **row_values,
            }
            for side in sides:
                if row.get(side) is not None and row.get("real"):
                    row[f"{side}_error"] = row[side] / row["real"] - 1
            out.append(row)
        add(
            "NIXL transfer ms (mean)",
            "p8/d8",
            f"{length} tokens",
            None,
            "handoff",
            "p8/d8",
            length,
            "nixl",
            "xfer_ms_mean",
        )
    return out


def measurements(results: dict[str, Any], which: dict[str, tuple[str, ...]]) -> list[Measurement]:
    """The real ``graphs`` engine's TTFT and ITL p50 points as the fit's measurements."""
    real = results.get("real") or {}
    points = []
    for length in which.get("ttft", ()):
        value = _get(real, "ttft", "graphs", length, "p50_ms")
        if value:
            points.append(Measurement("prefill", int(length), 0, value / 1e3))
    for figure in ("itl", "itl_long"):
        for batch in which.get(figure, ()):
            cell = _get(real, figure, "graphs", batch) or {}
            if cell.get("p50_ms"):
                context = int(cell.get("context_tokens") or 256)
                points.append(Measurement("decode", int(batch), context, cell["p50_ms"] / 1e3))
    return points


def calibrate(
    results: dict[str, Any], layer_calibration: dict[str, Any] | None, device: str = ""
) -> tuple[Calibration, list[dict[str, Any]]]:
    """Fit on ``FIT``, report every point of ``FIT`` and ``CHECK`` with its errors."""
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h200")
    base = DEFAULT_EFFICIENCY
    if layer_calibration and isinstance(layer_calibration.get("efficiency"), dict):
        base = replace(
            base,
            layer_overhead_s=float(layer_calibration["efficiency"].get("layer_overhead_s", 0.0)),
        )
    fitted = fit_engine_efficiency(model, gpu, measurements(results, FIT), base=base)
    table = []
    for role, which in (("fit", FIT), ("check", CHECK)):
        for point in measurements(results, which):
            before, after = predict(model, gpu, point, base), predict(model, gpu, point, fitted)
            table.append(
                {
                    "role": role,
                    "kind": point.kind,
                    "tokens": point.tokens,
                    "context": point.context,
                    "measured_ms": point.seconds * 1e3,
                    "predicted_default_ms": before * 1e3,
                    "predicted_calibrated_ms": after * 1e3,
                    "error_default": before / point.seconds - 1,
                    "error_calibrated": after / point.seconds - 1,
                }
            )
    return Calibration("h200", fitted, device), table


def calibration_json(cal: Calibration, table: list[dict[str, Any]]) -> dict[str, Any]:
    return calibration_document(
        cal,
        benchmark={
            "what": "whole vLLM 0.26.0 engine at its client (bench/fidelity.py)",
            "model_shape": "llama-3.1-8b",
            "fit": FIT,
            "check": CHECK,
        },
        points=table,
    )


def _cell(value: Any, error: Any = None) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    text = f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return text if error is None else f"{text} ({error * 100:+.0f}%)"


def markdown(
    results: dict[str, Any], table: list[dict[str, Any]], efficiency: Efficiency, header: list[str]
) -> str:
    sides = [s for s in ("sim", "sim_calibrated") if s in results]
    lines = [*header, "", "## Real vs simulated, at the client", ""]
    names = {"sim": "sim (defaults)", "sim_calibrated": "sim (calibrated)"}
    lines.append(
        "| figure | engine | point | real | " + " | ".join(names[s] for s in sides) + " | target |"
    )
    lines.append("|---|---|---|---:|" + "---:|" * len(sides) + "---|")
    for row in rows(results, tuple(sides)):
        bound = TARGETS.get(row["target"] or "")
        cells = [_cell(row.get(s), row.get(f"{s}_error")) for s in sides]
        lines.append(
            f"| {row['figure']} | {row['engine']} | {row['point']} | "
            f"{_cell(row['real'])} | {' | '.join(cells)} | "
            f"{'±' + format(bound * 100, '.0f') + '%' if bound else '-'} |"
        )
    lines += [
        "",
        "## Calibration (fitted on the `fit` points, checked on the `check` points)",
        "",
        f"Fitted efficiency: compute {efficiency.compute:.3f}, attention "
        f"{efficiency.attention:.3f}, memory {efficiency.memory:.3f}, step overhead "
        f"{efficiency.step_overhead_s * 1e3:.2f} ms, layer overhead "
        f"{efficiency.layer_overhead_s * 1e6:.1f} µs.",
        "",
        "| role | phase | tokens / batch | context | measured ms | roofline defaults ms "
        "| error | calibrated ms | error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['role']} | {r['kind']} | {r['tokens']} | {r['context']} | "
            f"{r['measured_ms']:.2f} | {r['predicted_default_ms']:.2f} | "
            f"{r['error_default'] * 100:+.0f}% | {r['predicted_calibrated_ms']:.2f} | "
            f"{r['error_calibrated'] * 100:+.0f}% |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sides = [s for s in ("real", "sim", "sim_calibrated") if s in results]
    for side in sides:
        lengths = [512, 1024, 2048, 4096, 8192]
        ttft = [_get(results[side], "ttft", "graphs", str(n), "p50_ms") for n in lengths]
        left.plot(lengths, ttft, marker="o", label=side)
        batches = [1, 8, 16, 32, 64]
        itl = [_get(results[side], "itl", "graphs", str(b), "p50_ms") for b in batches]
        right.plot(batches, itl, marker="o", label=side)
    left.set(
        xscale="log",
        xlabel="prompt tokens",
        ylabel="TTFT p50 (ms)",
        title="TTFT at the client (CUDA graphs)",
    )
    right.set(
        xlabel="concurrent streams",
        ylabel="ITL p50 (ms)",
        title="inter-token latency (128-token prompts)",
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

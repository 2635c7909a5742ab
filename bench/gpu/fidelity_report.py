"""docs/fidelity.md, its plot and the H200 calibration, from a fidelity results JSON.

Pure functions from the results (``bench/fidelity.py``) to rows, a calibration and Markdown; the
plot is the only part that needs matplotlib.  The figures compared, real against simulated, are
the issue's: TTFT p50 per prompt length, ITL p50/p90 per batch size and context, the interference
stall, in CUDA-graph and eager mode, and the P/D handoff.  Error = simulated / real - 1.

The calibration is fitted on part of the real points and checked on the others (``FIT``,
``CHECK``): ``disagg.planner.calibration.fit_client_efficiency`` on TTFT, ITL p50 and the
interference stall, in CUDA-graph and eager mode, each predicted the way a client sees it
(``disagg.planner.client``).  It is written in the format of ``docs/calibration-h100.json``
(extended: the client-side fields, every point with its figure, and the link profile).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.gpu import link_fit

from disagg.planner.calibration import Calibration, calibration_document, fit_client_efficiency
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


def client_points(
    results: dict[str, Any], which: dict[str, tuple[str, ...]], quantile: str = "p50"
) -> list[ClientPoint]:
    """The real side's figures named by ``which`` as the fit's points (ITL at ``quantile``)."""
    real = results.get("real") or {}
    points = []
    for mode in MODES:
        for length in which.get("ttft", ()) if quantile == "p50" else ():
            value = _get(real, "ttft", mode, length, "p50_ms")
            if value:
                label = f"TTFT p50 | {mode} | {length} tokens"
                points.append(
                    ClientPoint(
                        "ttft", int(length), value / 1e3, eager=mode == "eager", label=label
                    )
                )
        for batch in which.get("itl", ()):
            cell = _get(real, "itl", mode, batch) or {}
            if cell.get(f"{quantile}_ms"):
                points.append(ClientPoint(
                    "itl", int(batch), cell[f"{quantile}_ms"] / 1e3, eager=mode == "eager",
                    context=float(cell.get("context_tokens") or 256),
                    label=f"ITL {quantile} | {mode} | batch {batch}",
                ))  # fmt: skip
    for batch in which.get("itl_long", ()):
        cell = _get(real, "itl_long", "graphs", batch) or {}
        if cell.get(f"{quantile}_ms"):
            points.append(ClientPoint(
                "itl", int(batch), cell[f"{quantile}_ms"] / 1e3,
                context=float(cell.get("context_tokens") or 4224),
                label=f"ITL {quantile}, 4096-token prompts | graphs | batch {batch}",
            ))  # fmt: skip
    for engine in which.get("stall", ()) if quantile == "p50" else ():
        cell = _get(real, "interference", engine) or {}
        if not cell.get("stall_p50_ms"):
            continue
        # The running streams' context when the long prompt arrives: 128 prompt tokens and
        # ~0.8 s of decoding at the baseline ITL (bench/fidelity.py's interference()).
        itl = _median([r.get("baseline_itl_p50_ms") for r in cell.get("rounds", [])]) or 5.0
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
                "measured_ms": point.seconds * 1e3,
                "predicted_default_ms": before * 1e3,
                "predicted_calibrated_ms": after * 1e3,
                "error_default": before / point.seconds - 1,
                "error_calibrated": after / point.seconds - 1,
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


def _cell(value: Any, error: Any = None) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    text = f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return text if error is None else f"{text} ({error * 100:+.0f}%)"


def _fields(eff: Efficiency) -> str:
    return (
        f"compute {eff.compute:.3f}, attention {eff.attention:.3f}, memory {eff.memory:.3f}; "
        f"step overhead {eff.step_overhead_s * 1e3:.3f} ms, per sequence in a step "
        f"{eff.sequence_overhead_s * 1e6:.1f} µs, eager kernel launches "
        f"{eff.eager_layer_launch_s * 1e6:.0f} µs per layer (`--enforce-eager` only), request "
        f"overhead {eff.request_overhead_s * 1e3:.2f} ms + {eff.request_token_overhead_s * 1e6:.2f}"
        " µs per prompt token (API server, outside steps)"
    )


def _mark(error: float, bound: float) -> str:
    return "yes" if abs(error) <= bound else "**no**"


def markdown(
    results: dict[str, Any],
    table: list[dict[str, Any]],
    efficiency: Efficiency,
    header: list[str],
    link: dict[str, Any] | None = None,
) -> str:
    sides = [s for s in ("sim", "sim_calibrated", "sim_refit") if s in results]
    lines = [
        *header,
        "",
        "## Calibration: the model against the real engine, point by point",
        "",
        "What the timing model (`disagg.planner.client` over `disagg.planner.roofline`) predicts "
        "for each figure, with the roofline's rule-of-thumb defaults (what the simulator and "
        "planner used before) and with the constants fitted here "
        "(`disagg.planner.calibration.fit_client_efficiency`), which `disagg plan --gpu h200` "
        "and `disagg sim --sim-gpu h200` now use by default (`disagg.planner.measured`). Fitted "
        "on the `fit` rows only; the `check` rows were never seen by the fit. A deterministic "
        "step has one length, so a p90 is predicted by the same step as the p50.",
        "",
        f"Fitted: {_fields(efficiency)}.",
        "",
        "| role | figure | engine | point | real ms | defaults ms | error | calibrated ms | error "
        "| target | met |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['role']} | {r['figure']} | {r['engine']} | {r['point']} | "
            f"{_cell(r['measured_ms'])} | {_cell(r['predicted_default_ms'])} | "
            f"{r['error_default'] * 100:+.0f}% | {_cell(r['predicted_calibrated_ms'])} | "
            f"{r['error_calibrated'] * 100:+.0f}% | ±{r['target'] * 100:.0f}% | "
            f"{_mark(r['error_calibrated'], r['target'])} |"
        )
    met = sum(abs(r["error_calibrated"]) <= r["target"] for r in table)
    before = sum(abs(r["error_default"]) <= r["target"] for r in table)
    lines += [
        "",
        f"Within target: {met} of {len(table)} points calibrated ({before} with the defaults).",
    ]
    if link:
        lines += [
            "",
            "## The KV link: fabric model and the measured TCP-emulation profile",
            "",
            "Two link models, kept apart (`disagg.planner.links`): `fabric`, for real fabrics "
            "(RDMA), times a transfer as its bytes at the link's line rate (`--sim-link-gbps`, "
            "`disagg plan --link-gbps`); `ucx-tcp-emulation` is what this VM's UCX does with no "
            "RDMA device (TCP emulation over loopback), fitted from NIXL's own transfer times: "
            f"{link['latency_s'] * 1e3:.1f} ms + bytes at "
            f"{link['bandwidth_bytes_s'] / 2**20:.1f} MiB/s (fitted on the "
            f"{' and '.join(link_fit.FIT)}-token transfers). The fidelity driver's simulators use "
            "it (`DISAGG_SIM_LINK`), since they stand in for engines on that VM; nothing else "
            "does.",
            "",
            "| prompt tokens | measured ms | profile ms | error |",
            "|---:|---:|---:|---:|",
            *(
                f"| {c['tokens']} (check) | {_cell(c['measured_ms'])} | "
                f"{_cell(c['predicted_ms'])} | {c['error'] * 100:+.0f}% |"
                for c in link.get("checks", [])
            ),
        ]
    names = {
        "sim": "sim (as run)",
        "sim_calibrated": "sim (calibrated)",
        "sim_refit": "sim (eager refit)",
    }
    lines += [
        "",
        "## Real vs simulated, at the client",
        "",
        "The simulator itself, started from the same rendering and measured by the same "
        "driver. `sim (as run)`: the simulator of the run's call 3 (for 2026-12-01: the "
        "roofline's defaults, before this calibration). `sim (calibrated)`: the simulator with "
        "the measured H200 preset as it stood when the run was made (`bench/gpu/device.sh "
        "simfit`, or `fidelity-all` beside the real engines, docs/gpu.md), when the run has it. "
        "`sim (eager refit)`: the eager simulator with the refitted eager constant, measured "
        "pinned beside the pinned engine's passes (`device.sh eager-pin`), when there is one.",
        "",
        "| figure | engine | point | real | " + " | ".join(names[s] for s in sides) + " | target |",
        "|---|---|---|---:|" + "---:|" * len(sides) + "---|",
    ]
    for row in rows(results, tuple(sides)):
        bound = TARGETS.get(row["target"] or "")
        cells = [_cell(row.get(s), row.get(f"{s}_error")) for s in sides]
        lines.append(
            f"| {row['figure']} | {row['engine']} | {row['point']} | "
            f"{_cell(row['real'])} | {' | '.join(cells)} | "
            f"{'±' + format(bound * 100, '.0f') + '%' if bound else '-'} |"
        )
    lines += spread_lines(results)
    return "\n".join(lines) + "\n"


def spread_lines(results: dict[str, Any]) -> list[str]:
    """The real engines' ITL pass by pass, where a point was measured in several passes."""
    out = []
    for engine, cells in (_get(results, "real", "itl") or {}).items():
        for batch, cell in (cells or {}).items():
            passes = (cell or {}).get("rounds") or []
            if len(passes) < 2:
                continue
            p50s = ", ".join(_cell(p.get("p50_ms")) for p in passes)
            p90s = ", ".join(_cell(p.get("p90_ms")) for p in passes)
            loads = ", ".join(f"{p.get('loadavg_1m', 0):.1f}" for p in passes)
            deciles = " / ".join(_cell(d) for d in cell.get("deciles_ms") or [])
            out.append(
                f"| {engine} | {batch} | {p50s} | {p90s} | {_cell(cell.get('p50_ms'))} | "
                f"{deciles} | {loads} |"
            )
    if not out:
        return []
    return [
        "",
        "## ITL pass by pass (real engine)",
        "",
        "Points measured in several passes over the batch sizes (`--eager-rounds`): each pass's "
        "own p50 and p90, the pooled p50 the tables above use, the pooled gaps' deciles "
        "(10 % ... 90 %) and the machine's 1-minute load average after each pass.",
        "",
        "| engine | batch | p50 per pass ms | p90 per pass ms | pooled p50 ms | deciles ms "
        "| load average |",
        "|---|---:|---|---|---:|---|---|",
        *out,
    ]


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

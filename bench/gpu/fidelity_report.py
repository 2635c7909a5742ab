"""docs/fidelity.md and its plot, from a fidelity results JSON and its calibration.

Pure functions from the results (``bench/fidelity.py``) to rows and Markdown; the plot is the
only part that needs matplotlib.  The figures compared, real against simulated, are the issue's:
TTFT p50 per prompt length, ITL p50/p90 per batch size and context, the interference stall, in
CUDA-graph and eager mode, and the P/D handoff.  Error = simulated / real - 1.  The calibration
itself (the points it is fitted and checked on, the fit) is ``fidelity_fit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.gpu import link_fit
from bench.gpu.fidelity_fit import TARGETS, dig, median_of

from disagg.planner.roofline import Efficiency


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
            "real": dig(real, *path),
        }
        for side in sides:
            value = dig(results.get(side) or {}, *path)
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
                s: median_of(dig(results.get(s) or {}, "handoff", "p8/d8", length, key))
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


def cell_text(value: Any, error: Any = None) -> str:
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
            f"{cell_text(r['measured_ms'])} | {cell_text(r['predicted_default_ms'])} | "
            f"{r['error_default'] * 100:+.0f}% | {cell_text(r['predicted_calibrated_ms'])} | "
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
                f"| {c['tokens']} (check) | {cell_text(c['measured_ms'])} | "
                f"{cell_text(c['predicted_ms'])} | {c['error'] * 100:+.0f}% |"
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
        cells = [cell_text(row.get(s), row.get(f"{s}_error")) for s in sides]
        lines.append(
            f"| {row['figure']} | {row['engine']} | {row['point']} | "
            f"{cell_text(row['real'])} | {' | '.join(cells)} | "
            f"{'±' + format(bound * 100, '.0f') + '%' if bound else '-'} |"
        )
    lines += spread_lines(results)
    return "\n".join(lines) + "\n"


def spread_lines(results: dict[str, Any]) -> list[str]:
    """The real engines' ITL pass by pass, where a point was measured in several passes."""
    out = []
    for engine, cells in (dig(results, "real", "itl") or {}).items():
        for batch, cell in (cells or {}).items():
            passes = (cell or {}).get("rounds") or []
            if len(passes) < 2:
                continue
            p50s = ", ".join(cell_text(p.get("p50_ms")) for p in passes)
            p90s = ", ".join(cell_text(p.get("p90_ms")) for p in passes)
            loads = ", ".join(f"{p.get('loadavg_1m', 0):.1f}" for p in passes)
            deciles = " / ".join(cell_text(d) for d in cell.get("deciles_ms") or [])
            out.append(
                f"| {engine} | {batch} | {p50s} | {p90s} | {cell_text(cell.get('p50_ms'))} | "
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
        ttft = [dig(results[side], "ttft", "graphs", str(n), "p50_ms") for n in lengths]
        left.plot(lengths, ttft, marker="o", label=side)
        batches = [1, 8, 16, 32, 64]
        itl = [dig(results[side], "itl", "graphs", str(b), "p50_ms") for b in batches]
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

"""From a GPU-tier run's JSON to the docs: "Real vLLM on an H200", docs/fidelity.md, calibration.

    python -m bench.gpu.report --store /work/.device/... --run docs/gpu-runs/2026-12-01
    python -m bench.gpu.report --run docs/gpu-runs/2026-12-01            # regenerate the docs

``--store`` copies what the device calls left under ``$OUT`` (``call1.json``, ``suite.json``,
``fidelity.json``, ``calibration-h200-layers.json``, ``two_gpu.json``; engine log tails dropped)
into the run's folder under ``docs/``, where it is committed.  Then, from that folder alone:
the section of ``docs/benchmarks.md`` between its markers (the gateway benchmark keeps it when it
rewrites the file), ``docs/fidelity.md`` with ``docs/fidelity.png``, and
``docs/calibration-h200.json``.  Every number in those files comes from the run's JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.gpu import eager_report, fidelity_fit, fidelity_report, link_fit
from bench.gpu.sections import REAL_VLLM_BEGIN, REAL_VLLM_END

ROOT = Path(__file__).resolve().parents[2]
FILES = (
    "call1.json",
    "suite.json",
    "fidelity.json",
    "calibration-h200-layers.json",
    "two_gpu.json",
    "fidelity-simfit.json",
    "kvprobe.json",
    "eager-passes.json",
    "cpu-speed.json",
)
DROP = ("log_tails", "real_log_tails", "sim_log_tails", "sim_calibrated_log_tails")
UCX_CAVEAT = (
    "On this machine UCX moves the KV between two processes on the one GPU by TCP emulation "
    "(`software emulation | tcp/lo`, ~400 MiB/s, FAULTS.md and ../shared/real-vllm), so transfer "
    "*times* here are not a fabric's; engine timings and the protocol are real."
)


def shown(path: Path) -> str:
    """``path`` as the docs name it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def store(sources: list[Path], run: Path) -> list[str]:
    """The known result files of the calls' ``$OUT`` folders, in the run's folder."""
    run.mkdir(parents=True, exist_ok=True)
    stored = []
    for name in FILES:
        found = [s / name for s in sources if (s / name).exists()]
        if not found:
            continue
        path = found[-1]
        data = json.loads(path.read_text())
        for key in DROP:
            data.pop(key, None) if isinstance(data, dict) else None
        (run / name).write_text(json.dumps(data, indent=1) + "\n")
        stored.append(name)
    return stored


def load(run: Path, name: str) -> dict[str, Any]:
    path = run / name
    return json.loads(path.read_text()) if path.exists() else {}


def _pct(ok: int, n: int) -> str:
    return f"{ok}/{n} ({ok / n * 100:.0f} %)" if n else "n/a"


def traffic_rows(suite: dict[str, Any]) -> list[str]:
    lines = [
        "| through | requests ok | chat/completions x stream/whole x short/long | long prompts "
        "disaggregated | D's prompt tokens: external / local |",
        "|---|---|---|---|---|",
    ]
    for key, name in (
        ("gateway", "our gateway"),
        ("vllm_router", "vllm-router 0.1.17"),
        ("after_prefill_restart", "our gateway, after P restarted"),
    ):
        run = suite.get(key)
        if not run:
            lines.append(f"| {name} | not run | | | |")
            continue
        kinds = ", ".join(f"{v['ok']}/{v['n']}" for v in run["by_kind"].values())
        tokens = run.get("decode_prompt_tokens") or {}
        lines.append(
            f"| {name} | {_pct(run['ok'], run['n'])} | {kinds} | "
            f"{run['long_disaggregated']}/{run['long']} | "
            f"{tokens.get('external_kv_transfer', 0):.0f} / "
            f"{tokens.get('local_compute', 0):.0f} |"
        )
    return lines


def fault_lines(suite: dict[str, Any]) -> list[str]:
    lines = []
    killed = suite.get("fault_prefill_killed_under_load")
    if killed:
        during, after = killed["during"], killed["after_while_down"]
        lines.append(
            f"* **Prefill worker killed under load** (SIGKILL while "
            f"{'busy' if killed['prefill_was_busy'] else 'possibly idle'}): "
            f"{_pct(during['ok'], during['n'])} of the requests in flight succeeded "
            f"(routes {during['routes']}); while it was down "
            f"{_pct(after['ok'], after['n'])} (routes {after['routes']})."
        )
    victim = suite.get("fault_decode_killed_mid_stream")
    if victim:
        lines.append(
            f"* **Decode worker killed mid-stream**: {len(victim['requests'])} streams; "
            f"{victim['explicit_error']} ended with an explicit error, "
            f"{victim['silently_truncated']} silently truncated, "
            f"{victim['completed']} completed."
        )
    direct = suite.get("stale_params_direct") or []
    for policy in ("recompute", "fail"):
        rows = [r for r in direct if r.get("policy") == policy]
        if rows:
            text = "; ".join(
                f"{r['kind']} {'stream' if r['stream'] else 'whole'}: HTTP {r.get('status')}"
                + (
                    f", {r.get('text_events')} tokens, finish {r.get('finish_reason')}, "
                    f"error event {r.get('error_event')}"
                    if r["stream"]
                    else ""
                )
                for r in rows
            )
            lines.append(
                f"* **Prefill restarted between the legs**, its old "
                f"`kv_transfer_params` sent to a decode worker with "
                f"`kv_load_failure_policy: {policy}`: {text}."
            )
    gateway = suite.get("stale_params_through_gateway") or {}
    for decode, policy in (("d", "recompute"), ("d_fail", "fail")):
        run = gateway.get(decode)
        if run:
            lines.append(
                f"* The same through our gateway (a prefill worker answering from "
                f"before its restart), decode policy `{policy}`: "
                f"{_pct(run['ok'], run['n'])} succeeded, {run['silent_empty']} silent "
                f"empty answers, routes {run['routes']}"
                + (
                    f"; {run['same_as_reference']}/{run['n']} the same text as the decode "
                    "worker's own answer to the same greedy request (the reference)."
                    if "same_as_reference" in run
                    else "."
                )
            )
    return lines


def kvprobe_lines(probe: dict[str, Any]) -> list[str]:
    """Issue 14: the gateway's KV-event index against a real engine's prefix cache."""
    k = probe.get("kvprobe")
    if not k:
        return []
    return [
        "",
        "### KV events: the gateway's index against the engine's own cache (issue 14)",
        "",
        f"One {probe.get('engine')} engine (tiny model, prefix caching, `kvEvents` on, the "
        "rendered `PYTHONHASHSEED`), its ZMQ events decoded and indexed by the gateway's own "
        "code (`bench/gpu/kvprobe.py`); sequential token-id prompts sharing 10-block prefixes. "
        f"Predicted hit = the index's longest run of the prompt's blocks; the engine's = the "
        f"change of `vllm:prefix_cache_hits_total`. **{k['exact_predictions']}/{k['requests']} "
        f"predictions exact** ({k['requests_with_hits']} requests hit; "
        f"{k['predicted_hit_tokens']} tokens predicted, {k['engine_hit_tokens']:.0f} found); "
        f"block hashes recomputed from the events' token ids: algorithm "
        f"`{k['hash_algorithm_matching']}` matches "
        f"{(k.get('first_blocks_matching') or {}).get(k['hash_algorithm_matching'], 0)} of "
        f"{k['first_blocks_checked']} first blocks checked; {k['event_batches']} event batches, "
        f"{k['blocks_stored']} blocks stored, {len(k.get('decode_errors') or [])} decode errors.",
    ]


def benchmarks_section(run: Path) -> str:
    probe, suite, fidelity = (
        load(run, "call1.json"),
        load(run, "suite.json"),
        load(run, "fidelity.json"),
    )
    two = load(run, "two_gpu.json")
    versions = {v.get("vllmVersion") for v in (suite.get("rendered") or {}).values()}
    lines = [
        REAL_VLLM_BEGIN,
        "## Real vLLM on an H200",
        "",
        f"Generated by `python -m bench.gpu.report --run {shown(run)}` from the "
        f"run's JSON (committed there). GPU: {probe.get('gpus', 'n/a')}; Python "
        f"{probe.get('python', 'n/a')}, torch {(probe.get('packages') or {}).get('torch')}; "
        f"engines: {suite.get('engine', 'n/a')} {', '.join(sorted(filter(None, versions)))}, "
        "started from `disagg render --workers bench/gpu/disaggdeployment.yaml` (the "
        "operator's own rendering; docs/gpu.md lists the local substitutions).",
        "",
        UCX_CAVEAT,
        "",
        "### The official openai client through our gateway and vllm-router",
        "",
        *traffic_rows(suite),
        "",
        "### Faults on real engines",
        "",
        *fault_lines(suite),
    ]
    handoff = ((fidelity.get("real") or {}).get("handoff") or {}).get("p8/d8")
    if isinstance(handoff, dict) and "error" not in handoff:
        lines += [
            "",
            "### P/D handoff, Llama-3.1-8B shape",
            "",
            "| prompt tokens | prefill leg ms | D TTFT incl. pull ms | D local-prefill TTFT ms "
            "| NIXL transfer ms | MiB per transfer |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for length, row in handoff.items():
            nixl = row.get("nixl") or {}
            per = nixl.get("bytes", 0) / nixl["transfers"] / 2**20 if nixl.get("transfers") else 0
            median = fidelity_fit.median_of
            lines.append(
                f"| {length} | {fidelity_report.cell_text(median(row['p_ms']))} | "
                f"{fidelity_report.cell_text(median(row['d_ttft_ms']))} | "
                f"{fidelity_report.cell_text(median(row['d_local_ttft_ms']))} | "
                f"{fidelity_report.cell_text(nixl.get('xfer_ms_mean'))} | {per:.0f} |"
            )
    if two:
        lines += ["", "### Two H200s: prefill and decode on separate GPUs (issue 19)", ""]
        lines += [
            f"* {name}: " + json.dumps({k: v for k, v in two[name].items() if k != "slo"})
            for name in ("aggregated", "disaggregated")
            if name in two
        ]
        lines.append(f"* UCX transport lines: {two.get('ucx_transport')}")
    lines += kvprobe_lines(load(run, "kvprobe.json"))
    lines += [
        "",
        "Simulator fidelity against the same engines: [fidelity.md](fidelity.md).",
        REAL_VLLM_END,
    ]
    return "\n".join(lines)


def write_benchmarks(docs: Path, section: str) -> None:
    path = docs / "benchmarks.md"
    text = path.read_text()
    if REAL_VLLM_BEGIN in text:
        start = text.index(REAL_VLLM_BEGIN)
        end = text.index(REAL_VLLM_END) + len(REAL_VLLM_END)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def write_fidelity(
    run: Path, docs: Path, fit_run: Path | None = None, eager_run: Path | None = None
) -> None:
    """``fit_run``: the calibration stays the one fitted on that earlier run (its file is
    rewritten from it unchanged), and every point of ``run`` checks it.  ``eager_run``: a run of
    ``device.sh eager-pin``, whose pinned passes replace the real eager figures; the calibration
    stays as fitted (``bench/gpu/eager_report.py`` says why)."""
    results = load(run, "fidelity.json")
    if not (results.get("real") or {}).get("ttft"):
        return
    # The simulator-only run with the calibrated preset (device.sh simfit), when there is one.
    simfit = load(run, "fidelity-simfit.json")
    if simfit.get("sim_calibrated"):
        results["sim_calibrated"] = simfit["sim_calibrated"]
    probe = load(run, "call1.json")
    source = fit_run or run
    fit_results = load(source, "fidelity.json")
    cal, table = fidelity_fit.calibrate(
        fit_results, str(load(source, "call1.json").get("gpus", ""))
    )
    link = link_fit.link_fit(fit_results)
    passes = load(eager_run, "eager-passes.json") if eager_run else {}
    before = results
    if passes:  # the eager engine's own run: its pinned passes are the real eager figures
        results = eager_report.overlay(results, passes)
    document = fidelity_fit.calibration_json(cal, table, link)
    (docs / "calibration-h200.json").write_text(json.dumps(document, indent=2) + "\n")
    if fit_run is not None:
        _, table = fidelity_fit.calibrate(results, fitted=cal.efficiency)
    command = f"python -m bench.gpu.report --run {shown(run)}"
    command += f" --fit-run {shown(fit_run)}" if fit_run is not None else ""
    command += f" --eager-run {shown(eager_run)}" if eager_run is not None else ""
    header = [
        "# Simulator fidelity: `disagg sim` against real vLLM on an H200",
        "",
        f"Generated by `{command}` from `fidelity.json` there (real side: "
        f"{results.get('real_program')}). GPU: {probe.get('gpus', 'n/a')}. Method: "
        "bench/fidelity.py's docstring. Error = simulated / real - 1.",
    ]
    if fit_run is not None:
        header += [
            "",
            f"The calibration was fitted on an earlier run ({shown(fit_run)}, "
            "docs/calibration-h200.json): this run's real engines were never seen by the fit, "
            "so every row below is a check"
            + (
                f"; the real eager figures are the pinned passes of {shown(eager_run)}, where "
                "the eager engine ran alone (the last section says why they miss the targets)."
                if passes and eager_run is not None
                else "."
            ),
        ]
    header += ["", "![real vs simulated](fidelity.png)"]
    text = fidelity_report.markdown(results, table, cal.efficiency, header, link)
    if passes and eager_run is not None:
        lines = eager_report.pass_lines(passes, shown(eager_run))
        lines += eager_report.verdict_lines(
            passes, before, cal.efficiency, load(eager_run, "cpu-speed.json")
        )
        text += "\n".join(lines) + "\n"
    (docs / "fidelity.md").write_text(text)
    fidelity_report.plot(results, docs / "fidelity.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="the run's folder under docs/")
    parser.add_argument(
        "--store", type=Path, nargs="+", help="the calls' $OUT folders: copy their JSON first"
    )
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument(
        "--fit-run",
        type=Path,
        help="keep the calibration fitted on this earlier run; --run's points all check it",
    )
    parser.add_argument(
        "--eager-run",
        type=Path,
        help="a device.sh eager-pin run: its pinned passes are the real eager figures",
    )
    args = parser.parse_args(argv)
    run = args.run.resolve()
    if args.store:
        print("stored:", ", ".join(store(args.store, run)))
    if (run / "suite.json").exists():  # a fidelity-only run leaves the suite's section as it is
        write_benchmarks(args.docs, benchmarks_section(run))
    write_fidelity(
        run,
        args.docs,
        args.fit_run.resolve() if args.fit_run else None,
        args.eager_run.resolve() if args.eager_run else None,
    )
    print(
        f"wrote {args.docs / 'benchmarks.md'} and, with a fidelity run, fidelity.md/.png and "
        "calibration-h200.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

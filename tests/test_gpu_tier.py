"""The GPU tier's pure parts (bench/gpu): the device-call plan and its limits, the local
substitutions applied to the operator's rendering, the bundle's bookkeeping, the report.

The tier itself runs on a GPU machine (or, as its CPU proof, ``python -m bench.gpu.emulate``);
these tests pin what must hold before any of that is spent."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.gpu import (
    affinity,
    bundle,
    calls,
    cpu_speed,
    eager_passes,
    eager_report,
    engines,
    fidelity_fit,
    fidelity_report,
    plans,
    report,
    suite,
    traffic,
)
from bench.gpu.sections import REAL_VLLM_BEGIN, REAL_VLLM_END

from disagg.planner.catalog import get_model
from disagg.planner.client import ClientPoint
from disagg.planner.hardware import get_gpu
from disagg.planner.roofline import Efficiency
from disagg.render.objects import render_workers

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def rendered(plan: engines.EnginePlan) -> dict[str, Any]:
    """What ``disagg render --workers`` prints for the plan, rendered in-process."""
    doc = yaml.safe_load((ROOT / plan.resource).read_text())
    from disagg.render.cli import apply_setting

    for change in plan.sets:
        apply_setting(doc, change)
    (worker,) = [w for w in render_workers(doc) if w.role == plan.role]
    return worker.to_json()


# -- the device calls ------------------------------------------------------------------------
def test_one_gpu_run_is_three_calls_that_fit_the_device_limits() -> None:
    plan = calls.one_gpu_calls()
    assert [c.name for c in plan] == ["call 1", "call 2", "call 3"]
    assert [c.carry for c in plan] == [(".gpu/c1",), (".gpu/c2",), ()]
    carried = {".gpu/c1": 57 * MiB, ".gpu/c2": 58 * MiB}
    assert calls.check_plan(plan, 2 * MiB, carried) == []
    assert all(c.kind == "nvidia-h200" and c.timeout_s <= 600 for c in plan)


def test_the_plan_refuses_what_the_device_would_refuse() -> None:
    plan = calls.one_gpu_calls()
    problems = calls.check_plan(plan, 5 * MiB, {".gpu/c1": 60 * MiB, ".gpu/c2": 10 * MiB})
    assert problems == ["call 1 sends 65.0 MiB (limit 64 MiB, 2 MiB kept free)"]
    long = [replace(plan[0], command="x" * 2001, writes=tuple("abcdefghi"))]
    assert len(calls.check_plan(long, 0, {})) == 2


def test_the_simulator_only_run_is_two_short_calls_with_both_parts() -> None:
    """Issue 20's validation: a fresh machine gets part 1, then part 2 with the sims only."""
    plan = calls.sim_fit_calls()
    assert [c.carry for c in plan] == [(".gpu/c1",), (".gpu/c2",)]
    assert "device.sh 1 " in plan[0].command and "device.sh simfit " in plan[1].command
    assert "fidelity-simfit.json" in plan[1].writes and plan[1].timeout_s <= 600
    assert calls.check_plan(plan, 2 * MiB, {".gpu/c1": 57 * MiB, ".gpu/c2": 58 * MiB}) == []
    script = (ROOT / "bench" / "gpu" / "device.sh").read_text()
    simfit = script[script.index("  simfit)") :]
    assert "--sides sim --label sim_calibrated" in simfit.split(";;")[0]


def test_two_gpu_run_needs_its_own_machine_and_both_parts() -> None:
    plan = calls.two_gpu_calls()
    assert {c.kind for c in plan} == {"nvidia-h200-x2"}
    assert [c.carry for c in plan] == [(".gpu/c1",), (".gpu/c2",)]
    assert "device.sh x2" in plan[1].command


@pytest.mark.parametrize("total", [0, 1, 115_000_001])
def test_parts_add_up_and_differ_by_at_most_a_byte(total: int) -> None:
    sizes = calls.split_sizes(total, 2)
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1


# -- the bundle ------------------------------------------------------------------------------
def test_requirements_are_a_pinned_closed_set_with_the_engine_and_the_router() -> None:
    reqs = bundle.requirements()
    names = {r.split("==")[0] for r in reqs}
    assert {"vllm", "nixl", "nixl-cu13", "vllm-router", "pydantic", "openai"} <= names
    assert "vllm==0.26.0" in reqs and "vllm-router==0.1.17" in reqs
    assert len(names) == len(reqs), "one version of each package"


def test_bundle_key_follows_requirements_and_strip_list(monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = bundle.requirements()
    key = bundle.bundle_key(reqs)
    assert bundle.bundle_key(list(reversed(reqs))) == key
    assert bundle.bundle_key([*reqs, "x==1"]) != key
    monkeypatch.setitem(bundle.STRIP, "vllm/extra", "test")
    assert bundle.bundle_key(reqs) != key


def test_wheel_files_match_pip_s_normalised_names(tmp_path: Path) -> None:
    for name in ("mistral_common-1.13.1-py3-none-any.whl", "PyJWT-2.15.1-py3-none-any.whl",
                 "nixl_cu13-1.3.2-cp312-cp312-manylinux_2_28_x86_64.whl"):  # fmt: skip
        (tmp_path / name).touch()
    found = bundle.wheel_files(["mistral_common==1.13.1", "PyJWT==2.15.1", "nixl-cu13==1.3.2"],
                               tmp_path)  # fmt: skip
    assert [p.name.split("-")[0] for p in found] == ["mistral_common", "PyJWT", "nixl_cu13"]
    with pytest.raises(bundle.BundleError, match=r"no wheel for nixl==1\.3\.2"):
        bundle.wheel_files(["nixl==1.3.2"], tmp_path)


# -- the operator's rendering, run here ------------------------------------------------------
def test_protocol_engines_run_the_rendering_with_only_the_documented_substitutions() -> None:
    plan = plans.by_name(plans.protocol_engines())["d_fail"]
    worker = rendered(plan)
    argv, env = engines.local_command(worker, plan, "vllm", "python3", Path("/m"))
    assert argv[:5] == ["python3", "-m", "vllm.entrypoints.cli.main", "serve", "/m/tiny"]
    args = argv[5:]
    untouched = [a for a in worker["args"] if a not in ("0.0.0.0", "8000")]
    assert all(a in args for a in untouched), "every rendered flag is kept"
    assert (
        args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "8201"
    )
    assert args[args.index("--kv-cache-memory-bytes") + 1] == str(plan.kv_cache_bytes)
    assert {"--load-format", "dummy", "--enforce-eager"} <= set(args)
    config = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert config["kv_load_failure_policy"] == "fail" and config["kv_role"] == "kv_consumer"
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"
    assert env["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5602"
    assert env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "30"


def test_the_simulator_takes_the_same_argv_and_the_timing_engines_render() -> None:
    for plan in plans.timing_engines():
        worker = rendered(plan)
        assert worker["vllmVersion"] == "0.26.0"
        vllm, _ = engines.local_command(worker, plan, "vllm", "py", Path("/m"))
        sim, _ = engines.local_command(worker, plan, "sim", "py", Path("/m"))
        assert sim[:6] == ["py", "-m", "disagg.cli", "sim", "serve", "/m/llama-3.1-8b"]
        assert vllm[5:] == sim[6:], plan.name
    eager = rendered(plans.by_name(plans.timing_engines())["eager"])
    assert "--enforce-eager" in eager["args"] and "--no-enable-prefix-caching" in eager["args"]


def test_engines_of_one_run_never_share_a_port() -> None:
    every = plans.protocol_engines() + plans.timing_engines()
    ports = [p.port for p in every] + [p.side_channel_port for p in every if p.side_channel_port]
    assert len(ports) == len(set(ports))


def test_a_rendered_env_the_machine_cannot_fill_is_an_error() -> None:
    plan = plans.protocol_engines()[0]
    worker = {**rendered(plan), "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {}}}]}
    with pytest.raises(engines.EngineError, match="cannot fill HF_TOKEN"):
        engines.local_command(worker, plan, "vllm", "python3")


# -- what the suite and the report compute ----------------------------------------------------
METRICS = """# TYPE vllm:prompt_tokens_by_source counter
vllm:prompt_tokens_by_source_total{engine="0",model_name="m",source="external_kv_transfer"} 30.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="m",source="local_compute"} 5.0
"""


def test_prompt_sources_are_read_per_label() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(METRICS):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    delta = traffic.prompt_sources({}, samples)
    assert delta == {"local_compute": 5.0, "local_cache_hit": 0.0, "external_kv_transfer": 30.0}


def _request(kind: str, stream: bool, long: bool, ok: bool, route: str) -> dict[str, Any]:
    return {"kind": kind, "stream": stream, "long": long, "ok": ok, "route": route}


def test_summary_counts_what_a_reader_checks() -> None:
    requests = [_request("chat", True, True, True, "disaggregated"),
                _request("chat", True, True, False, "fallback"),
                {**_request("completions", False, False, False, "decode_only"),
                 "silent_empty": True}]  # fmt: skip
    summary = suite.summarize(requests)
    assert summary["ok"] == 1 and summary["silent_empty"] == 1
    assert summary["long_disaggregated"] == 1 and summary["long"] == 2
    assert summary["by_kind"]["chat/stream/long"] == {"ok": 1, "n": 2}


def synthetic_fidelity() -> dict[str, Any]:
    """Real-side figures made by a known efficiency; the sim side off by a known factor."""
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h200")
    true = Efficiency(compute=0.8, attention=0.4, memory=0.85, step_overhead_s=1e-3,
                      sequence_overhead_s=1e-5, eager_layer_launch_s=7e-4,
                      request_overhead_s=8e-3, request_token_overhead_s=3e-6)  # fmt: skip

    def ms(point: ClientPoint) -> float:
        return point.predict(model, gpu, true) * 1e3

    real: dict[str, Any] = {"ttft": {}, "itl": {}, "itl_long": {"graphs": {}}, "interference": {}}
    for mode in ("graphs", "eager"):
        eager = mode == "eager"
        real["ttft"][mode] = {
            str(n): {"p50_ms": ms(ClientPoint("ttft", n, 1, eager=eager))}
            for n in (512, 1024, 2048, 4096, 8192)
        }
        real["itl"][mode] = {}
        for b in (1, 8, 16, 32, 64):
            value = ms(ClientPoint("itl", b, 1, eager=eager, context=256))
            real["itl"][mode][str(b)] = {"p50_ms": value, "p90_ms": value * 1.2,
                                         "context_tokens": 256}  # fmt: skip
    for b in (1, 8, 16):
        value = ms(ClientPoint("itl", b, 1, context=4224))
        real["itl_long"]["graphs"][str(b)] = {"p50_ms": value, "p90_ms": value * 1.2,
                                              "context_tokens": 4224}  # fmt: skip
    for engine, budget in (("graphs", 8192), ("chunk2048", 2048)):
        stall = ms(ClientPoint("stall", 8192, 1, budget=budget, running=8, context=128 + 160))
        real["interference"][engine] = {"stall_p50_ms": stall,
                                        "rounds": [{"baseline_itl_p50_ms": 5.0}]}  # fmt: skip
    sim = json.loads(json.dumps(real))
    for cell in sim["ttft"]["graphs"].values():
        cell["p50_ms"] *= 1.2
    return {"real": real, "sim": sim, "real_program": "vllm"}


def test_calibration_fits_some_points_and_is_checked_on_the_others() -> None:
    results = synthetic_fidelity()
    cal, table = fidelity_fit.calibrate(results, "NVIDIA H200")
    assert cal.gpu == "h200"
    assert {r["role"] for r in table} == {"fit", "check"}
    fitted = {(r["figure"], r["engine"], r["point"]) for r in table if r["role"] == "fit"}
    checked = {(r["figure"], r["engine"], r["point"]) for r in table if r["role"] == "check"}
    assert ("TTFT p50", "graphs", "1024 tokens") in checked - fitted
    assert ("interference stall", "chunk2048", "budget 2048") in checked - fitted
    p50 = [r for r in table if "p90" not in r["figure"]]
    assert max(abs(r["error_calibrated"]) for r in p50) < 0.01
    assert max(abs(r["error_default"]) for r in p50) > 0.5  # eager: the defaults know no launches
    doc = fidelity_fit.calibration_json(cal, table)
    assert doc["schema"] == "disagg.dev/calibration/v1" and doc["gpu"] == "h200"


def test_fidelity_rows_carry_the_error_of_each_simulated_side() -> None:
    rows = fidelity_report.rows(synthetic_fidelity(), ("sim",))
    ttft = next(r for r in rows if r["figure"] == "TTFT p50 ms" and r["point"] == "512 tokens")
    assert ttft["sim_error"] == pytest.approx(0.2)
    itl = next(r for r in rows if r["figure"] == "ITL p50 ms" and r["point"] == "batch 8")
    assert itl["sim_error"] == pytest.approx(0.0)


def test_the_gpu_section_replaces_only_itself(tmp_path: Path) -> None:
    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\ngateway tables\n")
    report.write_benchmarks(tmp_path, f"{REAL_VLLM_BEGIN}\nfirst\n{REAL_VLLM_END}")
    report.write_benchmarks(tmp_path, f"{REAL_VLLM_BEGIN}\nsecond\n{REAL_VLLM_END}")
    text = (tmp_path / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks\n\ngateway tables\n")
    assert "second" in text and "first" not in text and text.count(REAL_VLLM_BEGIN) == 1


def test_a_phase_is_skipped_or_recorded_never_fatal(tmp_path: Path) -> None:
    from bench.gpu.record import Budget, Results

    results = Results(tmp_path / "out.json")
    budget = Budget(100.0, results)
    assert budget.run("fits", 10, lambda phase: phase.left() <= 100) is True
    assert budget.run("too big", 1000, lambda phase: "never") is None

    def broken(phase: object) -> None:
        raise RuntimeError("engine died")

    assert budget.run("broken", 1, broken) is None
    phases = json.loads((tmp_path / "out.json").read_text())["phases"]
    assert [p["outcome"][:7] for p in phases] == ["ok", "skipped", "error: "]
    assert "engine died" in phases[2]["outcome"]


def test_the_eager_pinning_run_is_two_calls_with_both_parts() -> None:
    """Issue 20, eager mode: part 1, then part 2 and the eager engine alone, pass by pass."""
    plan = calls.eager_pin_calls()
    assert [c.carry for c in plan] == [(".gpu/c1",), (".gpu/c2",)]
    assert "device.sh eager-pin " in plan[1].command and plan[1].timeout_s <= 600
    assert "eager-passes.json" in plan[1].writes
    assert calls.check_plan(plan, 2 * MiB, {".gpu/c1": 57 * MiB, ".gpu/c2": 58 * MiB}) == []
    script = (ROOT / "bench" / "gpu" / "device.sh").read_text()
    assert "bench.gpu.eager_passes" in script[script.index("  eager-pin)") :].split(";;")[0]


def test_the_pinned_layout_gives_the_engine_core_cpus_of_its_own() -> None:
    place = affinity.layout(list(range(16)))
    sets = [place.system, place.api, place.engine, place.client]
    assert sum(len(s) for s in sets) == 16 and len(frozenset().union(*sets)) == 16
    assert len(place.engine) == 4 and place.engine.isdisjoint(place.client | place.api)
    small = affinity.layout([0, 1])  # the CPU proof's machine: overlap, but never empty
    assert all([small.system, small.api, small.engine, small.client])


def test_eager_passes_alternate_placements_before_the_loaded_ones() -> None:
    order = eager_passes.schedule(3)
    assert order[:6] == [("unpinned", False), ("pinned", False)] * 3
    assert order[6:] == [("unpinned", True), ("pinned", True)]


def test_the_eager_refit_moves_only_the_eager_constant_and_recovers_it() -> None:
    """The eager refit starts from the graph-mode fit and moves the launches alone: fitted on
    eager points made with a known constant, it finds that constant, the rest untouched."""
    results = synthetic_fidelity()
    base = Efficiency(compute=0.8, attention=0.4, memory=0.85, step_overhead_s=1e-3,
                      sequence_overhead_s=1e-5, eager_layer_launch_s=3e-4,
                      request_overhead_s=8e-3, request_token_overhead_s=3e-6)  # fmt: skip
    fitted, labels = fidelity_fit.refit_eager(results, base)
    assert fitted.eager_layer_launch_s == pytest.approx(7e-4, rel=0.01)
    assert replace(fitted, eager_layer_launch_s=0.0) == replace(base, eager_layer_launch_s=0.0)
    assert labels and all(" | eager | " in label for label in labels)
    assert "ITL p50 | eager | batch 8" not in labels  # a check point, never fitted


def test_the_pinned_passes_replace_only_the_real_eager_figures() -> None:
    results = synthetic_fidelity()
    pinned = {"ttft": {"eager": {"512": {"p50_ms": 1.0}}}, "itl": {"eager": {"1": {"p50_ms": 2.0}}}}
    passes = {
        "pooled": {"pinned": pinned, "unpinned": {"itl": {"eager": {"1": {"p50_ms": 9.0}}}}},
        "sim_refit": {"ttft": {"eager": {}}, "itl": {"eager": {"1": {"p50_ms": 2.2}}}},
        "passes": [
            {"placement": p, "loaded": False, "itl": {"1": {"p50_ms": v}}}
            for p, v in (("unpinned", 10.0), ("pinned", 2.0), ("unpinned", 20.0), ("pinned", 2.1))
        ],
    }
    merged = eager_report.overlay(results, passes)
    assert merged["real"]["itl"]["eager"] == {"1": {"p50_ms": 2.0}}
    assert merged["real"]["itl"]["graphs"] == results["real"]["itl"]["graphs"]
    assert merged["sim_refit"]["itl"] == {"eager": {"1": {"p50_ms": 2.2}}}  # a side of its own
    spreads = eager_report.spread_by_placement(passes)
    assert spreads["unpinned"]["1"] == pytest.approx(1.0)
    assert spreads["pinned"]["1"] == pytest.approx(0.05)


def test_the_cpu_speed_summary_reads_the_spread_and_the_correlation() -> None:
    series = [10.0, 12.0, 20.0, 11.0, 10.5, 19.0, 10.2, 10.1, 10.3, 18.0]
    brief = cpu_speed.summary(series)
    assert brief["min_ms"] == 10.0 and brief["max_ms"] == 20.0 and brief["max_over_min"] == 2.0
    assert cpu_speed.correlation(series, [2 * v for v in series]) == pytest.approx(1.0)
    assert cpu_speed.per_second([(0.2, 5.0), (0.7, 7.0), (1.1, 9.0)], 0.0) == [6.0, 9.0]


def test_the_report_keeps_the_calibration_and_says_why_eager_misses(tmp_path: Path) -> None:
    """docs/fidelity.md from the committed runs: the eager engine's own run replaces the real
    eager figures, the calibration file is written unchanged, and the verdict is printed."""
    runs = ROOT / "docs" / "gpu-runs"
    report.write_fidelity(runs / "2026-12-01-b", tmp_path, runs / "2026-12-01", runs / "2026-12-02")
    written = json.loads((tmp_path / "calibration-h200.json").read_text())
    committed = json.loads((ROOT / "docs" / "calibration-h200.json").read_text())
    assert written == committed
    text = (tmp_path / "fidelity.md").read_text()
    assert "### Why the eager targets are not met" in text and "pinned" in text

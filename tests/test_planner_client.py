"""The client-side timing model (TTFT, ITL, the interference stall), the measured H200 preset
and the KV link profiles: the arithmetic a user of `disagg plan`/`disagg sim --sim-gpu h200`
gets, and the committed calibration it was copied from."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from bench.gpu import fidelity_fit, link_fit

from disagg.planner.calibration import fit_client_efficiency, load_calibration
from disagg.planner.catalog import get_model
from disagg.planner.client import ClientPoint, chunks, itl_s, stall_s, ttft_s
from disagg.planner.hardware import get_gpu
from disagg.planner.links import FABRIC, UCX_TCP_EMULATION, get_link
from disagg.planner.measured import H200_VLLM_0_26, default_efficiency
from disagg.planner.roofline import DEFAULT_EFFICIENCY, decode_step_time_s, step_time_s

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "docs" / "gpu-runs" / "2026-12-01"
MODEL, H200 = get_model("llama-3.1-8b"), get_gpu("h200")


def test_chunks_leave_room_for_the_running_decodes() -> None:
    assert chunks(8192, 8192) == [(8192, 0)]
    assert chunks(8192, 8192, running=8) == [(8184, 0), (8, 8184)]
    assert chunks(5000, 2048, running=48) == [(2000, 0), (2000, 2000), (1000, 4000)]


def test_a_mixed_step_reads_the_weights_once() -> None:
    """The stall a decode batch sees is one forward with the chunk, not a prefill plus a
    decode step (which would pay the weights and the step overhead twice)."""
    eff = H200_VLLM_0_26
    mixed = step_time_s(MODEL, H200, [(2040, 0)], 8, 300.0, efficiency=eff)
    alone = step_time_s(MODEL, H200, [(2040, 0)], efficiency=eff)
    decode = decode_step_time_s(MODEL, H200, 8, 300.0, efficiency=eff)
    assert alone < mixed < alone + decode


def test_eager_steps_pay_their_launches_and_graphs_do_not() -> None:
    eff = H200_VLLM_0_26
    graphs, eager = itl_s(MODEL, H200, 1, 256, eff), itl_s(MODEL, H200, 1, 256, eff, eager=True)
    assert graphs < 6e-3 and eager > 20e-3
    # A long prefill is compute-bound either way: the launches hide under the GPU's work.
    assert ttft_s(MODEL, H200, 8192, eff, eager=True) == ttft_s(MODEL, H200, 8192, eff)


def test_a_smaller_chunk_budget_shortens_the_stall() -> None:
    eff = H200_VLLM_0_26
    default = stall_s(MODEL, H200, 8192, 8192, 8, 300.0, eff)
    small = stall_s(MODEL, H200, 8192, 2048, 8, 300.0, eff)
    assert small < default / 3


def test_the_client_fit_recovers_the_constants_it_was_given() -> None:
    truth = replace(DEFAULT_EFFICIENCY, compute=0.7, memory=0.85, step_overhead_s=1e-3,
                    sequence_overhead_s=8e-6, eager_layer_launch_s=7e-4,
                    request_overhead_s=6e-3, request_token_overhead_s=3e-6)  # fmt: skip
    shapes = [ClientPoint("ttft", n, 1.0, eager=e) for n in (512, 2048, 8192) for e in (0, 1)]
    shapes += [ClientPoint("itl", b, 1.0, eager=e, context=256) for b in (1, 64) for e in (0, 1)]
    shapes += [ClientPoint("itl", 16, 1.0, context=4224)]
    shapes += [ClientPoint("stall", 8192, 1.0, budget=8192, running=8, context=300)]
    points = [replace(p, seconds=p.predict(MODEL, H200, truth)) for p in shapes]
    fitted = fit_client_efficiency(MODEL, H200, points)
    for p in points:
        assert p.predict(MODEL, H200, fitted) == pytest.approx(p.seconds, rel=0.02)


def test_the_h200_preset_is_the_committed_calibration() -> None:
    """`disagg plan --gpu h200` and `disagg sim --sim-gpu h200` use the literal; it must be
    what the report last fitted from the run (regenerate both together)."""
    cal = load_calibration(ROOT / "docs" / "calibration-h200.json")
    assert cal.gpu == "h200" and cal.efficiency == H200_VLLM_0_26
    assert default_efficiency(H200) == H200_VLLM_0_26
    assert default_efficiency(get_gpu("h100")) == DEFAULT_EFFICIENCY


def test_the_committed_calibration_is_what_the_report_fits_and_meets_the_graph_targets() -> None:
    results = json.loads((RUN / "fidelity.json").read_text())
    cal, table = fidelity_fit.calibrate(results)
    assert asdict(cal.efficiency) == asdict(H200_VLLM_0_26)
    graphs = [r for r in table if r["engine"] != "eager"]
    assert graphs and all(abs(r["error_calibrated"]) <= r["target"] for r in graphs)
    checks = [r for r in table if r["role"] == "check"]
    assert sum(abs(r["error_calibrated"]) for r in checks) < sum(
        abs(r["error_default"]) for r in checks
    )


def test_a_later_run_checks_the_earlier_fit_point_by_point_without_refitting() -> None:
    results = json.loads((RUN / "fidelity.json").read_text())
    _, fitted_here = fidelity_fit.calibrate(results)
    cal, checked = fidelity_fit.calibrate(results, fitted=H200_VLLM_0_26)
    assert cal.efficiency == H200_VLLM_0_26
    assert {r["role"] for r in checked} == {"check"}
    assert [r["predicted_calibrated_ms"] for r in checked] == [
        r["predicted_calibrated_ms"] for r in fitted_here
    ]


def test_link_profiles_keep_the_fabric_and_the_measured_emulation_apart() -> None:
    gib = 2**30
    assert FABRIC.transfer_s(gib, 100.0) == pytest.approx(gib * 8 / 100e9)
    assert UCX_TCP_EMULATION.transfer_s(gib, 100.0) == UCX_TCP_EMULATION.transfer_s(gib, 400.0)
    assert UCX_TCP_EMULATION.transfer_s(gib, 100.0) > 2.9
    link = link_fit.link_fit(json.loads((RUN / "fidelity.json").read_text()))
    assert link["latency_s"] == pytest.approx(UCX_TCP_EMULATION.latency_s, abs=1e-4)
    assert link["bandwidth_bytes_s"] == pytest.approx(UCX_TCP_EMULATION.bandwidth_bytes_s, rel=1e-3)
    with pytest.raises(LookupError, match="known: fabric, ucx-tcp-emulation"):
        get_link("infiniband-9000")

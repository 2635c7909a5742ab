"""Calibration: the fit recovers known efficiencies, files load or fail clearly, and the
committed H100 calibration is consistent with the code that reads it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from disagg.planner import Efficiency, get_gpu, get_model
from disagg.planner.calibration import (
    SCHEMA,
    Calibration,
    Measurement,
    calibration_document,
    error_table,
    fit_efficiency,
    layer_model,
    load_calibration,
    predict,
)
from disagg.planner.errors import CalibrationError, UnknownPresetError

ROOT = Path(__file__).resolve().parents[1]
H100 = get_gpu("h100-sxm")
LAYERS = layer_model(get_model("llama-3.1-8b"), 4)


def synthetic(truth: Efficiency) -> list[Measurement]:
    shapes = [("prefill", t, 0) for t in (512, 1024, 2048, 4096, 8192)]
    shapes += [("decode", b, 2048) for b in (1, 4, 16, 64, 256)]
    return [
        Measurement(kind, n, ctx, predict(LAYERS, H100, Measurement(kind, n, ctx, 1.0), truth))  # type: ignore[arg-type]
        for kind, n, ctx in shapes
    ]


def test_layer_model_is_one_slice_of_the_full_model() -> None:
    full = get_model("llama-3.1-8b")
    one = layer_model(full, 1)
    assert one.vocab_size == 0 and one.num_layers == 1
    non_embedding = full.num_params - 2 * full.vocab_size * full.hidden_size
    assert one.num_params * 32 == pytest.approx(non_embedding, rel=0.001)


def test_fit_reproduces_synthetic_measurements() -> None:
    truth = Efficiency(
        compute=0.7, attention=0.4, memory=0.85, layer_overhead_s=3e-5, step_overhead_s=0.0
    )
    points = synthetic(truth)
    fitted = fit_efficiency(LAYERS, H100, points)
    assert fitted.step_overhead_s == Efficiency().step_overhead_s  # not fitted, kept
    for row in error_table(LAYERS, H100, points, fitted):
        assert abs(row["error_calibrated"]) < 0.03, row
    assert fitted.compute == pytest.approx(0.7, abs=0.03)
    assert fitted.memory == pytest.approx(0.85, abs=0.05)


def test_fit_rejects_empty_or_nonpositive_measurements() -> None:
    with pytest.raises(CalibrationError):
        fit_efficiency(LAYERS, H100, [])
    with pytest.raises(CalibrationError):
        fit_efficiency(LAYERS, H100, [Measurement("decode", 1, 10, 0.0)])


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    cal = Calibration("h200", Efficiency(compute=0.5, memory=0.9), device="NVIDIA H200")
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration_document(cal, points=[])))
    assert load_calibration(path) == cal


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        ({"schema": "other"}, CalibrationError, "schema"),
        ({"schema": SCHEMA, "gpu": "tpu", "efficiency": {}}, UnknownPresetError, "known GPUs"),
        (
            {"schema": SCHEMA, "gpu": "h100", "efficiency": {"speed": 1}},
            CalibrationError,
            "unknown efficiency fields: speed",
        ),
        (
            {"schema": SCHEMA, "gpu": "h100", "efficiency": {"compute": 3}},
            CalibrationError,
            "compute",
        ),
        ([1, 2], CalibrationError, "JSON object"),
    ],
)
def test_bad_calibration_files_say_what_is_wrong(
    tmp_path: Path, document: object, error: type[Exception], message: str
) -> None:
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(document))
    with pytest.raises(error, match=message):
        load_calibration(path)


def test_committed_h100_calibration_matches_the_code() -> None:
    path = ROOT / "docs" / "calibration-h100.json"
    cal = load_calibration(path)
    assert cal.gpu == "h100-sxm" and "H100" in cal.device
    doc = json.loads(path.read_text())
    points = [
        Measurement(r["kind"], r["tokens"], r["context"], r["measured_ms"] / 1e3)
        for r in doc["points"]
    ]
    timed = layer_model(
        get_model(doc["benchmark"]["model_shape"]), doc["benchmark"]["layers_per_forward"]
    )
    rows = error_table(timed, H100, points, cal.efficiency)
    for stored, fresh in zip(doc["points"], rows, strict=True):
        assert fresh["predicted_calibrated_ms"] == pytest.approx(stored["predicted_calibrated_ms"])
    # The calibrated model is better than the spec-sheet defaults on the measured card.
    mean = {
        k: sum(abs(r[k]) for r in rows) / len(rows) for k in ("error_default", "error_calibrated")
    }
    assert mean["error_calibrated"] < mean["error_default"]
    # A file from before the client-side fields reads with them at 0 (no new costs).
    fields = asdict(cal.efficiency)
    assert {k: fields[k] for k in doc["efficiency"]} == doc["efficiency"]
    assert all(fields[k] == 0.0 for k in set(fields) - set(doc["efficiency"]))

"""``disagg plan`` as a user runs it: the reference numbers in --json (as a subprocess), the
table, --emit validated against the DisaggDeployment API, --calibration, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from disagg.planner.cli import main

ROOT = Path(__file__).resolve().parents[1]


def disagg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "disagg.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("gbps", "ms"), [("100", 107), ("400", 27)])
def test_json_gives_the_reference_figures(gbps: str, ms: int) -> None:
    proc = disagg(
        "plan", "--model", "llama-3.1-70b", "--prompt-tokens", "4096", "--link-gbps", gbps, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["kv_bytes_per_token"] == 327_680
    assert plan["kv_bytes_per_request"] == 1_342_177_280
    assert round(plan["kv_transfer_ms"]) == ms
    assert {c["name"] for c in plan["checks"]} == {
        "decode_share",
        "kv_transfer",
        "prefix_hit_rate",
        "gpu_count",
        "network",
    }
    assert plan["verdict"] in ("disaggregate", "disaggregate-selectively", "stay-aggregated")
    assert plan["disaggregated_gpus"] == plan["prefill"]["gpus"] + plan["decode"]["gpus"]


def test_llama_8b_request_is_0_54_gb(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--model", "llama-3.1-8b", "--prompt-tokens", "4096", "--json")
    assert code == 0
    assert round(json.loads(out)["kv_bytes_per_request"] / 1e9, 2) == 0.54


def test_table_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(
        capsys, "--model", "llama-3.1-70b", "--prompt-tokens", "4096", "--link-gbps", "100"
    )
    assert code == 0
    for text in (
        "327,680 bytes",
        "1,342,177,280 bytes",
        "107 ms at 100 Gb/s",
        "prefill",
        "decode",
        "aggregated",
        "decode_share",
        "network",
        "Verdict:",
    ):
        assert text in out, text
    assert out.count("PASS") + out.count("FAIL") == 5


def test_help_explains_the_flags_and_checks() -> None:
    proc = disagg("plan", "--help")
    assert proc.returncode == 0
    for text in (
        "--link-gbps",
        "--prompt-tokens",
        "--rate",
        "--ttft-p99-ms",
        "--emit",
        "--calibration",
        "config.json",
        "five checks",
    ):
        assert text in proc.stdout, text


def test_errors_are_one_line_without_traceback() -> None:
    proc = disagg("plan", "--model", "gpt-9")
    assert proc.returncode == 2
    assert proc.stderr.startswith("disagg plan: error: unknown model 'gpt-9'; known models:")
    assert "Traceback" not in proc.stderr
    bad_rate = disagg("plan", "--rate", "-1")
    assert bad_rate.returncode == 2 and "arrival rate" in bad_rate.stderr


def test_emit_is_a_valid_disagg_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    from disagg.api.disaggdeployment import DisaggDeployment

    args = ("--model", "llama-3.1-8b", "--rate", "10", "--link-gbps", "200", "--gpu-budget", "64")
    code, out, _ = run_main(capsys, *args, "--emit", "--name", "chat")
    assert code == 0
    assert out.startswith("# Suggested by `disagg plan`")
    manifest = yaml.safe_load(out)
    obj = DisaggDeployment.model_validate(manifest)
    assert obj.api_version == "disagg.dev/v1alpha1" and obj.metadata["name"] == "chat"
    _, plan_out, _ = run_main(capsys, *args, "--json")
    plan = json.loads(plan_out)
    assert obj.spec.prefill.replicas == plan["prefill"]["replicas"]
    assert obj.spec.decode.replicas == plan["decode"]["replicas"]
    assert obj.spec.prefill.parallelism.tensor == plan["prefill"]["tensor_parallel"]
    assert obj.spec.decode.parallelism.tensor % obj.spec.prefill.parallelism.tensor == 0
    assert obj.spec.rdma.enabled and obj.spec.rdma.link_gbps == 200
    assert obj.spec.model.architecture == "llama-3.1-8b"
    assert obj.spec.scaling.gpu_budget == 64


def test_calibration_file_changes_the_timing(capsys: pytest.CaptureFixture[str]) -> None:
    cal = str(ROOT / "docs" / "calibration-h100.json")
    _, default, _ = run_main(capsys, "--model", "llama-3.1-8b", "--json")
    code, calibrated, _ = run_main(
        capsys, "--model", "llama-3.1-8b", "--calibration", cal, "--json"
    )
    assert code == 0
    assert json.loads(calibrated)["prefill_ms"] != json.loads(default)["prefill_ms"]
    code, _, err = run_main(capsys, "--calibration", cal, "--gpu", "h200")
    assert code == 2 and "calibrates h100-sxm, not h200" in err


def test_config_json_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, out, _ = run_main(capsys, "--model", str(tmp_path / "config.json"), "--json")
    assert code == 0 and json.loads(out)["kv_bytes_per_token"] == 131_072


def test_list_shows_presets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "--list")
    assert code == 0
    for name in ("llama-3.1-70b", "deepseek-v3", "h100-sxm", "h200", "a100", "l40s", "b200"):
        assert name in out

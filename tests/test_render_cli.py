"""``disagg render``: the operator's rendering on the command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from disagg.render.cli import UsageError, apply_setting

ROOT = Path(__file__).resolve().parent.parent


def render(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "disagg.cli", "render", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        input=stdin,
        timeout=60,
    )


def workers_of(path: str, *extra: str) -> list[dict[str, Any]]:
    done = render(path, "--workers", *extra)
    assert done.returncode == 0, done.stderr
    workers: list[dict[str, Any]] = json.loads(done.stdout)
    return workers


def test_workers_are_the_deployments_vllm_containers() -> None:
    workers = workers_of("examples/disaggdeployment-full.yaml")
    assert [w["role"] for w in workers] == ["prefill", "decode"]
    manifests = list(yaml.safe_load_all(render("examples/disaggdeployment-full.yaml").stdout))
    deployments = {
        m["metadata"]["name"]: m["spec"]["template"]["spec"]["containers"][0]
        for m in manifests
        if m["kind"] == "Deployment" and "vllm" in {c["name"] for c in
                                                     m["spec"]["template"]["spec"]["containers"]}
    }  # fmt: skip
    for worker in workers:
        container = deployments[worker["pool"]]
        assert worker["command"] == container["command"]
        assert worker["args"] == container["args"]
        assert worker["env"] == container["env"]


def test_manifests_include_every_child_down_to_the_pools() -> None:
    kinds = [
        m["kind"]
        for m in yaml.safe_load_all(render("examples/disaggdeployment-minimal.yaml").stdout)
    ]
    assert kinds.count("InferencePool") == 2 and kinds.count("Deployment") == 3  # P, D, gateway
    assert {"Service", "ConfigMap"} <= set(kinds)
    # A disruption budget only where two pods can run: the gateway's (2 replicas), not the
    # one-worker pools'; a pool gets one once it can have two workers.
    assert kinds.count("PodDisruptionBudget") == 1
    two = render(
        "examples/disaggdeployment-minimal.yaml", "--set", "spec.prefill.replicas=2"
    ).stdout
    assert [m["kind"] for m in yaml.safe_load_all(two)].count("PodDisruptionBudget") == 2


def test_role_filter_and_set_change_what_is_rendered() -> None:
    (decode,) = workers_of(
        "bench/gpu/disaggdeployment.yaml",
        "--role",
        "decode",
        "--set",
        "spec.kvTransfer.loadFailurePolicy=fail",
        "--set",
        "spec.engine.enforceEager=true",
    )
    config = json.loads(decode["args"][decode["args"].index("--kv-transfer-config") + 1])
    assert config["kv_load_failure_policy"] == "fail"
    assert "--enforce-eager" in decode["args"]


def test_stdin_is_read_with_a_dash() -> None:
    text = (ROOT / "examples" / "inferencepool.yaml").read_text()
    done = render("-", "--workers", stdin=text)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere.yaml"], "cannot read nowhere.yaml"),
        (["examples/disaggdeployment-minimal.yaml", "--set", "spec.engine.vllmVersion=0.20.0"],
         "spec.engine.vllmVersion: Value error, engine.vllmVersion must be a vLLM release"),
        (["examples/disaggdeployment-minimal.yaml", "--set", "spec"], "PATH=VALUE"),
        (["crds/disagg.dev_inferencepools.yaml"], "kind must be one of"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    done = render(*args)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_apply_setting_reads_yaml_values_and_refuses_scalars_on_the_path() -> None:
    doc: dict[str, Any] = {"spec": {"engine": "x"}}
    apply_setting(doc, "spec.decode.replicas=3")
    assert doc["spec"]["decode"] == {"replicas": 3}
    with pytest.raises(UsageError, match="not an object"):
        apply_setting(doc, "spec.engine.port=1")

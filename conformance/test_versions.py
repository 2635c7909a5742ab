"""vLLM versions agree everywhere: the tier runs a tested release, the pinned one is the default
worker image and what the generated CRDs say, every tested release lies in the supported range,
and ``setup_env.sh`` reads the same lines as the Python code."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess

import vllm
from workers import INSTALLED_VLLM, ROOT, matrix_workers, scenario_workers

from disagg.api.common import EngineSpec
from disagg.api.versions import (
    DEFAULT_VLLM_IMAGE,
    TESTED_VLLM_VERSIONS,
    VLLM_VERSION,
    is_supported_vllm_version,
)

IMAGE = re.compile(r"vllm/vllm-openai:[^\s\"']+")
CRD_DIRS = [ROOT / "crds", ROOT / "charts" / "disagg" / "templates" / "crds"]
VERSIONS_PY = ROOT / "operator" / "disagg" / "api" / "versions.py"


def test_the_tier_runs_a_tested_vllm() -> None:
    assert INSTALLED_VLLM in TESTED_VLLM_VERSIONS
    assert importlib.metadata.version("vllm") == vllm.__version__ == INSTALLED_VLLM


def test_the_pinned_release_is_tested_and_every_tested_one_supported() -> None:
    assert VLLM_VERSION in TESTED_VLLM_VERSIONS
    assert all(is_supported_vllm_version(v) for v in TESTED_VLLM_VERSIONS)


def test_default_worker_image_is_the_pinned_version() -> None:
    assert f"vllm/vllm-openai:v{VLLM_VERSION}" == DEFAULT_VLLM_IMAGE
    assert EngineSpec().image == DEFAULT_VLLM_IMAGE
    assert EngineSpec().resolved_vllm_version == VLLM_VERSION


def test_this_run_checks_workers_rendered_for_the_installed_release() -> None:
    matrix = matrix_workers()
    assert {w.container["image"] for w in matrix} == {f"vllm/vllm-openai:v{INSTALLED_VLLM}"}
    assert {w.vllm_version for w in matrix + scenario_workers()} == {INSTALLED_VLLM}


def test_generated_crds_default_to_the_pinned_image() -> None:
    for folder in CRD_DIRS:
        if not folder.is_dir():
            continue
        found = {m for path in folder.glob("*.yaml") for m in IMAGE.findall(path.read_text())}
        assert found == {DEFAULT_VLLM_IMAGE}, f"{folder.relative_to(ROOT)}: {sorted(found)}"
    assert (ROOT / "crds").is_dir()


def test_setup_script_reads_the_same_versions() -> None:
    """setup_env.sh takes the versions from these lines with sed; each must stay one line."""
    text = VERSIONS_PY.read_text()
    assert re.findall(r'^VLLM_VERSION = "([^"]*)"$', text, re.MULTILINE) == [VLLM_VERSION]
    listed = subprocess.run(
        ["bash", str(ROOT / "conformance" / "setup_env.sh"), "--versions"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tuple(listed) == TESTED_VLLM_VERSIONS

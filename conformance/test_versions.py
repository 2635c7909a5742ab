"""One vLLM version everywhere: ``versions.VLLM_VERSION`` is what this tier installed, what the
worker image defaults to, and what the generated CRDs (plain and in the chart) default to."""

from __future__ import annotations

import importlib.metadata
import re

import vllm
from workers import ROOT, matrix_workers

from disagg.api.common import EngineSpec
from disagg.api.versions import DEFAULT_VLLM_IMAGE, VLLM_VERSION

IMAGE = re.compile(r"vllm/vllm-openai:[^\s\"']+")
CRD_DIRS = [ROOT / "crds", ROOT / "charts" / "disagg" / "templates" / "crds"]


def test_the_tier_runs_the_pinned_vllm() -> None:
    assert importlib.metadata.version("vllm") == VLLM_VERSION
    assert vllm.__version__ == VLLM_VERSION


def test_default_worker_image_is_the_pinned_version() -> None:
    assert f"vllm/vllm-openai:v{vllm.__version__}" == DEFAULT_VLLM_IMAGE
    assert EngineSpec().image == DEFAULT_VLLM_IMAGE
    images = {w.container["image"] for w in matrix_workers()}
    assert images == {DEFAULT_VLLM_IMAGE}


def test_generated_crds_default_to_the_pinned_image() -> None:
    for folder in CRD_DIRS:
        if not folder.is_dir():
            continue
        found = {m for path in folder.glob("*.yaml") for m in IMAGE.findall(path.read_text())}
        assert found == {DEFAULT_VLLM_IMAGE}, f"{folder.relative_to(ROOT)}: {sorted(found)}"
    assert (ROOT / "crds").is_dir()


def test_setup_script_reads_the_same_version() -> None:
    """setup_env.sh takes the version from this line with sed; it must stay one literal line."""
    text = (ROOT / "operator" / "disagg" / "api" / "versions.py").read_text()
    assert re.findall(r'^VLLM_VERSION = "([^"]*)"$', text, re.MULTILINE) == [VLLM_VERSION]

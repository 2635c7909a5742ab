"""The vLLM metric names we depend on are ones the pinned vLLM exports.

Three kinds of dependence: what the operator renders (KEDA/HPA queries, the worker's preStop drain
script), what the gateway reads from each worker's ``/metrics``, and what the simulator exports in
vLLM's place.  A renamed or removed metric (``vllm:gpu_cache_usage_perc`` went this way) would
otherwise break autoscaling or routing silently, since a query for a missing series just returns
nothing.
"""

from __future__ import annotations

import ast
import json
import re

import pytest
from vllm_cli import declared_metric, metric_names
from workers import ROOT, rendered_objects, shipped_crs

METRIC = re.compile(r"vllm:[a-zA-Z0-9_:]+")
#: Our sources that name vLLM metrics: the gateway reads them, the simulator exports them.
SOURCE_DIRS = [ROOT / "operator" / "disagg" / "gateway", ROOT / "operator" / "disagg" / "sim"]


def _rendered_metric_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for source, doc in shipped_crs():
        for obj in rendered_objects(doc):
            for name in METRIC.findall(json.dumps(obj)):
                used.setdefault(name, set()).add(f"{source}:{obj['kind']}")
    return used


def _source_metric_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for folder in SOURCE_DIRS:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in METRIC.findall(node.value):
                        used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return used


def test_vllm_declares_the_metrics_we_know_it_has() -> None:
    """The scan of vLLM's sources works (else every check below would pass on nothing)."""
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"} <= metric_names()
    assert declared_metric("vllm:prompt_tokens_total") == "vllm:prompt_tokens"
    assert declared_metric("vllm:gpu_cache_usage_perc") is None


RENDERED = _rendered_metric_names()
SOURCES = _source_metric_names()


def test_the_operator_renders_metric_queries() -> None:
    assert "vllm:num_requests_waiting" in RENDERED


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_rendered_metric_is_exported_by_vllm(name: str) -> None:
    assert declared_metric(name), f"{name} (used by {sorted(RENDERED[name])}) is not a vLLM metric"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_metric_the_gateway_reads_or_the_simulator_exports_is_vllm_s(name: str) -> None:
    assert declared_metric(name), f"{name} (in {sorted(SOURCES[name])}) is not a vLLM metric"

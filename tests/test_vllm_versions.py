"""vLLM releases: which one a spec renders for, which are refused, and what differs between them.

The conformance tier proves each release's parser accepts what we render; these tests pin the
rules themselves (fast, no vLLM installed).
"""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from disagg.api.common import EngineSpec
from disagg.api.versions import (
    SUPPORTED_VLLM_RANGE_TEXT,
    TESTED_VLLM_VERSIONS,
    VLLM_VERSION,
    is_supported_vllm_version,
    parse_vllm_version,
    resolve_vllm_version,
    vllm_version_of_image,
)
from disagg.render.vllm import dialect, vllm_args

from .test_render_cli import workers_of


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("vllm/vllm-openai:v0.26.0", "0.26.0"),
        ("registry.local:5000/vllm/vllm-openai:v0.33.0-cu130", "0.33.0"),
        ("mirror/vllm:0.30.1", "0.30.1"),
        ("vllm/vllm-openai:latest", None),
        ("disagg/sim:dev", None),
        ("acme/not-vllm:v0.26.0", None),
    ],
)
def test_release_is_read_only_from_a_vllm_image_tag(image: str, version: str | None) -> None:
    assert vllm_version_of_image(image) == version


def test_resolution_order_is_spec_then_image_tag_then_pinned() -> None:
    assert resolve_vllm_version("0.30.0", "vllm/vllm-openai:v0.26.0") == "0.30.0"
    assert resolve_vllm_version(None, "vllm/vllm-openai:v0.26.0") == "0.26.0"
    assert resolve_vllm_version(None, "disagg/sim:dev") == VLLM_VERSION
    assert EngineSpec().resolved_vllm_version == VLLM_VERSION


@pytest.mark.parametrize(
    ("version", "supported"),
    [("0.26.0", True), ("0.33.9", True), ("0.29.1", True), ("0.25.9", False), ("0.34.0", False),
     ("1.0.0", False), ("0.26", False), ("v0.26.0", False)],
)  # fmt: skip
def test_supported_range(version: str, supported: bool) -> None:
    assert is_supported_vllm_version(version) is supported


def test_every_tested_release_is_supported_and_parses() -> None:
    assert VLLM_VERSION in TESTED_VLLM_VERSIONS
    for version in TESTED_VLLM_VERSIONS:
        assert is_supported_vllm_version(version)
        assert parse_vllm_version(version) >= (0, 26, 0)


def test_an_unsupported_release_is_refused_naming_the_range() -> None:
    with pytest.raises(ValidationError, match=re.escape(SUPPORTED_VLLM_RANGE_TEXT)):
        EngineSpec(vllm_version="0.25.0")
    with pytest.raises(ValidationError, match=r"vLLM 0\.20\.0"):
        EngineSpec(image="vllm/vllm-openai:v0.20.0")
    # An explicit supported release wins over an image tag that names another one.
    assert EngineSpec(image="vllm/vllm-openai:v0.20.0", vllm_version="0.26.0")


@pytest.mark.parametrize(
    ("version", "off"),
    [("0.26.0", "--no-enable-prefix-caching"), ("0.32.1", "--no-enable-prefix-caching"),
     ("0.33.0", "--disable-prefix-caching")],
)  # fmt: skip
def test_a_switched_off_flag_is_spelled_per_release(version: str, off: str) -> None:
    assert dialect(version).switch("--enable-prefix-caching", False) == off
    assert dialect(version).switch("--enable-prefix-caching", True) == "--enable-prefix-caching"


def _args(**engine: object) -> list[str]:
    from disagg.api.common import KVTransferSpec, ModelSpec, ParallelismSpec

    return vllm_args(
        model=ModelSpec(name="m"),
        engine=EngineSpec.model_validate(engine),
        parallelism=ParallelismSpec(),
        kv=KVTransferSpec(),
        role="decode",
        extra_args=[],
    )


def test_engine_switches_render_for_the_release() -> None:
    old = _args(vllm_version="0.26.0", prefix_caching=False, enforce_eager=True,
                max_num_batched_tokens=2048)  # fmt: skip
    new = _args(image="vllm/vllm-openai:v0.33.0", prefix_caching=False)
    assert "--no-enable-prefix-caching" in old and "--enforce-eager" in old
    assert old[old.index("--max-num-batched-tokens") + 1] == "2048"
    assert "--disable-prefix-caching" in new and "--enforce-eager" not in new
    assert not any("prefix-caching" in a or "eager" in a for a in _args())


def test_the_gpu_tier_renders_vllm_026_and_kv_roles_per_pool() -> None:
    workers = {w["role"]: w for w in workers_of("bench/gpu/disaggdeployment.yaml")}
    assert {w["vllmVersion"] for w in workers.values()} == {"0.26.0"}
    assert '"kv_role":"kv_producer"' in " ".join(workers["prefill"]["args"])
    assert '"kv_role":"kv_consumer"' in " ".join(workers["decode"]["args"])
    (bench,) = workers_of("bench/gpu/inferencepool.yaml")
    assert "--no-enable-prefix-caching" in bench["args"]

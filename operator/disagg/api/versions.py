"""Versions that must agree across the project, kept in one place.

``VLLM_VERSION`` is the vLLM release whose command line, KV-transfer config and
environment we render and test against; the default worker image tag and the
conformance tier's pinned package both come from it.
"""

from __future__ import annotations

from disagg import __version__

GROUP = "disagg.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

VLLM_VERSION = "0.33.0"
DEFAULT_VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"

DISAGG_VERSION = __version__
DEFAULT_GATEWAY_IMAGE = f"disagg/gateway:{DISAGG_VERSION}"

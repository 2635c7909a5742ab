"""Versions that must agree across the project, kept in one place.

``VLLM_VERSION`` is the vLLM release the operator renders for when a spec says nothing else; the
default worker image tag comes from it.  ``TESTED_VLLM_VERSIONS`` are the releases the conformance
tier checks our rendering against, each with its own parser (``conformance/setup_env.sh`` reads
both lines with ``sed``: keep each a single literal line).  The operator renders for every release
between the oldest and the newest tested one (``SUPPORTED_VLLM_RANGE``); admission refuses others.

A spec names its engine's version in ``engine.vllmVersion``; without it the version is read from
the image tag of a vLLM image (``vllm/vllm-openai:v0.26.0``), else it is ``VLLM_VERSION``.  The
tag rule is deliberately narrow -- a repository whose last path part starts with ``vllm`` and a
tag that starts with a release number -- so a simulator or custom image never guesses.
"""

from __future__ import annotations

import re

from disagg import __version__

GROUP = "disagg.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

VLLM_VERSION = "0.33.0"
#: Every vLLM release the conformance tier checks our rendering against, each with its own parser.
TESTED_VLLM_VERSIONS = ("0.26.0", "0.33.0")
DEFAULT_VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"

#: Oldest and newest (major, minor) release series the operator renders for, both inclusive.
SUPPORTED_VLLM_RANGE = ((0, 26), (0, 33))
SUPPORTED_VLLM_RANGE_TEXT = "0.26.0 to 0.33.x"
#: The same range as one regular expression, for the CRD's CEL rules (RE2 syntax).
SUPPORTED_VLLM_PATTERN = r"^0\.(2[6-9]|3[0-3])\.[0-9]+$"
#: A vLLM image and its tag's release number (``.../vllm-openai:v0.26.0-cu130`` -> 0.26.0).
VLLM_IMAGE_TAG = r"^(.*/)?vllm[^/:@]*:v?([0-9]+\.[0-9]+\.[0-9]+)([^0-9].*)?$"

DISAGG_VERSION = __version__
DEFAULT_GATEWAY_IMAGE = f"disagg/gateway:{DISAGG_VERSION}"


def parse_vllm_version(text: str) -> tuple[int, int, int]:
    """``"0.26.0"`` -> ``(0, 26, 0)``; ``ValueError`` for anything that is not X.Y.Z."""
    match = re.fullmatch(r"([0-9]+)\.([0-9]+)\.([0-9]+)", text.strip())
    if match is None:
        raise ValueError(f"not a vLLM release number (X.Y.Z): {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def vllm_version_of_image(image: str) -> str | None:
    """The release a vLLM image's tag names, or None for other images and tags."""
    match = re.match(VLLM_IMAGE_TAG, image)
    return match.group(2) if match else None


def resolve_vllm_version(explicit: str | None, image: str) -> str:
    """The vLLM release to render for: the spec's, else the image tag's, else the pinned one."""
    return explicit or vllm_version_of_image(image) or VLLM_VERSION


def is_supported_vllm_version(version: str) -> bool:
    try:
        major, minor, _ = parse_vllm_version(version)
    except ValueError:
        return False
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED_VLLM_RANGE
    return (low_major, low_minor) <= (major, minor) <= (high_major, high_minor)

"""The vLLM conformance tier's session setup: our source tree first, vLLM on its CPU platform.

The tier runs with the interpreter of the cached vLLM environment that
``conformance/setup_env.sh`` builds (``make conformance`` does both).  That environment does not
contain our package; ``operator/`` of *this* checkout is put first on ``sys.path`` so the tier
always checks the tree it sits in, never a copy installed elsewhere.

Without vLLM importable the session stops with an error instead of skipping: a tier that
silently passes when its engine is missing would prove nothing.

``VLLM_TARGET_DEVICE=cpu`` selects vLLM's CPU platform (what vLLM's own CPU-only CI does with the
accelerator wheel); without it vLLM finds no device and refuses to build even its argument
parser.  vLLM 0.26 does not read that variable at run time (its CPU platform is only detected in a
CPU build), so there the session sets the same platform object directly, before anything asks for
it.  The hub and usage-stats switches keep every run off the network.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ["VLLM_TARGET_DEVICE"] = "cpu"
for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
    os.environ[_offline] = "1"

try:
    import vllm
    import vllm.platforms
except ImportError as exc:  # pragma: no cover - the message is the point
    raise pytest.UsageError(
        f"the vLLM conformance tier needs the pinned vLLM ({exc}); run `make conformance`, "
        f"which builds its environment with conformance/setup_env.sh and runs the tier with it"
    ) from exc

if not vllm.platforms.current_platform.device_type:  # vLLM 0.26: no device found
    from vllm.platforms.cpu import CpuPlatform

    vllm.platforms._current_platform = CpuPlatform()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder belongs to the ``vllm`` tier."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.vllm)

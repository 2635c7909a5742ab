"""The KV-layout labels of a worker pod: which prefill and decode workers may pair.

During a rollout that changes how KV is laid out -- the model or its revision, the engine image
and vLLM version (part of NIXL's handshake), the dtype, the KV-cache dtype, the block size,
quantization, the tokenizer, pipeline parallelism -- old and new pods serve side by side, and a
decode worker that loads KV computed under another layout answers wrong without an error.
Every worker pod is labelled with a hash of those fields (``disagg.dev/kv-layout``) and with its
tensor-parallel size (``disagg.dev/tensor-parallel``); the gateway pairs a prefill and a decode
worker only when the hashes match and the decode side's tensor parallelism is a multiple of the
prefill side's (NIXL maps the one onto the other; the DisaggDeployment's admission rules already
require it).

Only fields a prefill and a decode pool of one DisaggDeployment share, or must agree on, enter
the hash, so that both pools of one spec carry the same value; per-pool flags that change the
layout (``extraArgs`` on one side only) make the hashes differ, which is right -- those pools
cannot pair.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from disagg.api.inferencepool import InferencePoolSpec
from disagg.api.versions import resolve_vllm_version
from disagg.render.names import LABEL_KV_LAYOUT, LABEL_TENSOR_PARALLEL
from disagg.render.vllm import model_path

#: vLLM flags that change what a KV block holds or which tokens a prompt becomes.
LAYOUT_FLAGS = (
    "--dtype",
    "--kv-cache-dtype",
    "--quantization",
    "-q",
    "--tokenizer",
    "--tokenizer-revision",
    "--hf-overrides",
    "--load-format",
    "--code-revision",
)


def _layout_flags(args: list[str]) -> dict[str, str]:
    """The layout flags among ``args`` (``--flag value`` and ``--flag=value``), last one wins."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in LAYOUT_FLAGS:
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
            found["--quantization" if name == "-q" else name] = value
    return found


def kv_layout(spec: InferencePoolSpec) -> str:
    """A 16-hex-digit hash of everything that decides whether two workers' KV is compatible."""
    fields: dict[str, Any] = {
        "model": model_path(spec.model),
        "claim": spec.model.volume.claim_name if spec.model.volume else None,
        "revision": spec.model.revision,
        "image": spec.engine.image,
        "vllm": resolve_vllm_version(spec.engine.vllm_version, spec.engine.image),
        "block_size": spec.engine.block_size,
        "connector": spec.kv_transfer.connector,
        "buffer_device": spec.kv_transfer.buffer_device,
        "pipeline": spec.parallelism.pipeline,
        "flags": _layout_flags([*spec.engine.extra_args, *spec.extra_args]),
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def kv_layout_labels(spec: InferencePoolSpec) -> dict[str, str]:
    return {
        LABEL_KV_LAYOUT: kv_layout(spec),
        LABEL_TENSOR_PARALLEL: str(spec.parallelism.tensor),
    }

"""Turn a Hugging Face ``config.json`` into a :class:`ModelSpec`.

Architectures spell the same thing differently (``num_local_experts`` in Mixtral,
``num_experts`` in Qwen-MoE, ``n_routed_experts`` in DeepSeek), so the parser looks for each
quantity under every name it is known by and fails loudly, naming the missing key, rather than
guessing a shape.  Parameter counts are derived from the shape (:func:`estimate_params`), since
a config does not carry them.  Parsing is pure; :func:`model_from_config_file` is the one place
that reads a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from disagg.planner.errors import ModelConfigError
from disagg.planner.models import ModelSpec, estimate_params

_DTYPE_BYTES = {
    "float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2,
    "float8_e4m3fn": 1, "float8": 1, "fp8": 1,
}  # fmt: skip


def _first(config: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = config.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ModelConfigError(f"config.json: {key} must be a non-negative integer")
            return value
    if default is None:
        raise ModelConfigError(f"config.json has none of {', '.join(keys)}")
    return default


def _dtype_bytes(config: Mapping[str, Any]) -> int:
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping) and str(quant.get("quant_method", "")).lower() == "fp8":
        return 1
    name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").lower()
    name = name.removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ModelConfigError(f"config.json: unknown dtype {name!r}")
    return _DTYPE_BYTES[name]


def model_from_config(config: Mapping[str, Any], name: str = "custom") -> ModelSpec:
    """Build a :class:`ModelSpec` from a parsed ``config.json`` (``text_config`` is honoured)."""
    text = config.get("text_config")
    if isinstance(text, Mapping):
        config = {**config, **text}
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    heads = _first(config, "num_attention_heads", "n_head")
    if layers == 0 or hidden == 0 or heads == 0:
        raise ModelConfigError("config.json: layers, hidden size and heads must be positive")
    kv_heads = _first(config, "num_key_value_heads", "num_kv_heads", default=heads)
    head_dim = _first(config, "head_dim", default=hidden // heads)
    experts = _first(config, "num_local_experts", "num_experts", "n_routed_experts", default=0)
    kv_lora = _first(config, "kv_lora_rank", default=0)
    rope = _first(config, "qk_rope_head_dim", default=0)
    weight_bytes = _dtype_bytes(config)
    spec = ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=1 if kv_lora else kv_heads,
        head_dim=kv_lora + rope if kv_lora else head_dim,
        intermediate_size=_first(config, "intermediate_size", "n_inner", default=4 * hidden),
        vocab_size=_first(config, "vocab_size"),
        num_params=0,
        dtype_bytes=weight_bytes,
        kv_dtype_bytes=2 if weight_bytes == 1 else 0,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        num_experts=experts,
        experts_per_token=_first(config, "num_experts_per_tok", default=2 if experts else 0),
        moe_intermediate_size=_first(config, "moe_intermediate_size", default=0),
        num_shared_experts=_first(config, "n_shared_experts", default=0),
        first_dense_layers=_first(config, "first_k_dense_replace", default=0),
        kv_lora_rank=kv_lora,
        qk_rope_head_dim=rope,
        qk_nope_head_dim=_first(config, "qk_nope_head_dim", default=0),
        v_head_dim=_first(config, "v_head_dim", default=0),
        q_lora_rank=_first(config, "q_lora_rank", default=0),
        display_name=str(config.get("_name_or_path") or name),
    )
    total, active = estimate_params(spec)
    return replace(spec, num_params=total, active_params=active if spec.is_moe else 0)


def model_from_config_file(path: Path) -> ModelSpec:
    """Read and parse a ``config.json``; errors name the file."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot read a JSON config: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{path}: expected a JSON object")
    name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    try:
        return model_from_config(raw, name=name or "custom")
    except ModelConfigError as exc:
        raise ModelConfigError(f"{path}: {exc}") from None

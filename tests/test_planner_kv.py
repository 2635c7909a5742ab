"""KV-cache arithmetic, model/GPU presets and config.json parsing: the reference figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from disagg.planner import get_gpu, get_model, kv_bytes_per_token, transfer_time_s
from disagg.planner.errors import ModelConfigError, UnknownPresetError
from disagg.planner.models import MODELS, ModelSpec, estimate_params, preset_for_model_name

LLAMA_70B_GQA = ModelSpec(
    name="llama-70b-by-hand",
    num_layers=80,
    hidden_size=8192,
    num_attention_heads=64,
    num_kv_heads=8,
    head_dim=128,
    intermediate_size=28672,
    vocab_size=128256,
    num_params=70_553_706_496,
    dtype_bytes=2,
)


def test_llama_70b_gqa_kv_bytes_per_token_is_327680() -> None:
    assert kv_bytes_per_token(LLAMA_70B_GQA) == 327_680
    assert kv_bytes_per_token(get_model("llama-3.1-70b")) == 327_680


def test_llama_70b_4096_token_prompt_is_1342177280_bytes() -> None:
    assert kv_bytes_per_token(get_model("llama-3.1-70b")) * 4096 == 1_342_177_280


@pytest.mark.parametrize(("gbps", "expected_ms"), [(100, 107), (400, 27)])
def test_transfer_of_a_4096_token_70b_prompt(gbps: float, expected_ms: int) -> None:
    ms = transfer_time_s(1_342_177_280, gbps) * 1e3
    assert round(ms) == expected_ms


def test_llama_8b_4096_tokens_is_0_54_gb() -> None:
    model = get_model("llama-3.1-8b")
    assert model.num_layers == 32
    assert round(kv_bytes_per_token(model) * 4096 / 1e9, 2) == 0.54


def test_mla_caches_one_latent_per_layer() -> None:
    # DeepSeek-V3: 61 layers x (512 latent + 64 rope) x 2 bytes, no separate K and V.
    assert kv_bytes_per_token(get_model("deepseek-v3")) == 61 * 576 * 2


def test_fp8_kv_cache_halves_the_bytes() -> None:
    from dataclasses import replace

    fp8 = replace(get_model("llama-3.1-70b"), kv_dtype_bytes=1)
    assert kv_bytes_per_token(fp8) == 327_680 // 2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_from_shape_matches_the_preset(name: str) -> None:
    model = MODELS[name]
    total, active = estimate_params(model)
    assert total == pytest.approx(model.num_params, rel=0.005)
    assert active == pytest.approx(model.active_param_count, rel=0.02)


def test_unknown_presets_name_the_known_ones() -> None:
    with pytest.raises(UnknownPresetError, match=r"known GPUs: a100, b200, h100-sxm, h200, l40s"):
        get_gpu("tpu-v5")
    with pytest.raises(UnknownPresetError, match=re.escape("llama-3.1-70b")):
        get_model("gpt-5")


def test_gpu_aliases_and_spec_numbers() -> None:
    h100 = get_gpu("H100")
    assert h100.name == "h100-sxm"
    assert h100.hbm_bandwidth == 3.35e12
    assert get_gpu("h200").hbm_bandwidth > h100.hbm_bandwidth


@pytest.mark.parametrize(
    ("name", "preset"),
    [
        ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1-70b"),
        ("Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("Qwen/Qwen3-32B", "qwen3-32b"),
        ("someone/unknown-model", None),
    ],
)
def test_preset_guessed_from_hugging_face_id(name: str, preset: str | None) -> None:
    assert preset_for_model_name(name) == preset


LLAMA_70B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


def test_config_json_path_gives_the_same_shape(tmp_path: Path) -> None:
    folder = tmp_path / "Llama-3.1-70B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_70B_CONFIG))
    for ref in (str(folder / "config.json"), str(folder)):
        model = get_model(ref)
        assert model.name == "Llama-3.1-70B"
        assert kv_bytes_per_token(model) == 327_680
        assert model.num_params == pytest.approx(70.55e9, rel=0.001)


def test_config_json_moe_and_mla(tmp_path: Path) -> None:
    mixtral = {
        **LLAMA_70B_CONFIG,
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    }
    (tmp_path / "mixtral.json").write_text(json.dumps(mixtral))
    model = get_model(str(tmp_path / "mixtral.json"))
    assert model.is_moe
    assert model.num_params == pytest.approx(46.7e9, rel=0.01)
    assert model.active_param_count == pytest.approx(12.9e9, rel=0.01)

    mla = {
        "hidden_size": 7168,
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "vocab_size": 129280,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "intermediate_size": 18432,
    }
    (tmp_path / "mla.json").write_text(json.dumps(mla))
    assert kv_bytes_per_token(get_model(str(tmp_path / "mla.json"))) == 70_272


def test_config_json_errors_name_the_problem(tmp_path: Path) -> None:
    broken = {k: v for k, v in LLAMA_70B_CONFIG.items() if k != "hidden_size"}
    (tmp_path / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ModelConfigError, match="hidden_size"):
        get_model(str(tmp_path / "config.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match=re.escape("bad.json")):
        get_model(str(tmp_path / "bad.json"))
    with pytest.raises(ModelConfigError, match="no such file"):
        get_model(str(tmp_path / "missing.json"))

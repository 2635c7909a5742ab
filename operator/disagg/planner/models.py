"""Model presets and the one number disaggregation lives or dies by: KV-cache bytes per token.

A :class:`ModelSpec` holds the *shape* of a transformer, not its weights: layers, widths, heads,
KV heads (GQA), experts (MoE) and the latent width of multi-head latent attention (MLA).  From the
shape follow the KV cache per token, the parameters read per decode step and the FLOPs per
prefill token; :mod:`disagg.planner.roofline` turns those into seconds.

Presets carry the published parameter counts; a Hugging Face ``config.json`` (see
:mod:`disagg.planner.hf_config`) carries only the shape, so its counts are derived from the shape
by :func:`estimate_params` -- the same function a unit test checks against the presets.
:func:`disagg.planner.catalog.get_model` finds either by what a user typed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer, as far as serving cost is concerned."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    """KV heads per layer (GQA); equal to ``num_attention_heads`` for plain multi-head attention."""
    head_dim: int
    intermediate_size: int
    """Width of a dense MLP (and of the dense layers of an MoE that has some)."""
    vocab_size: int
    num_params: int
    """Total parameters (all experts)."""
    dtype_bytes: int = 2
    """Bytes per weight element (2 for bf16/fp16, 1 for fp8)."""
    kv_dtype_bytes: int = 0
    """Bytes per KV-cache element; 0 means the same as ``dtype_bytes``."""
    active_params: int = 0
    """Parameters one token passes through (MoE: shared part + top-k experts); 0 means all."""
    tie_word_embeddings: bool = False
    num_experts: int = 0
    """Routed experts per MoE layer; 0 for a dense model."""
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    first_dense_layers: int = 0
    """Leading dense-MLP layers of an MoE (DeepSeek's ``first_k_dense_replace``)."""
    kv_lora_rank: int = 0
    """MLA latent width; non-zero means the cache holds one latent per layer instead of K and V."""
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    q_lora_rank: int = 0
    display_name: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def kv_element_bytes(self) -> int:
        return self.kv_dtype_bytes or self.dtype_bytes

    @property
    def active_param_count(self) -> int:
        return self.active_params or self.num_params

    @property
    def embedding_params(self) -> int:
        """Input embedding plus (untied) output head: read, but no FLOPs per prompt token."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def qk_dim(self) -> int:
        """Per-head width of a query-key dot product."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def v_dim(self) -> int:
        return self.v_head_dim if self.is_mla else self.head_dim


def kv_bytes_per_token(model: ModelSpec) -> int:
    """KV-cache bytes one token occupies across all layers.

    GQA/MHA: ``2 (K and V) x layers x kv_heads x head_dim x bytes``.  MLA caches one compressed
    latent plus the decoupled RoPE key per layer: ``layers x (kv_lora_rank + rope_dim) x bytes``.
    """
    if model.is_mla:
        per_layer = model.kv_lora_rank + model.qk_rope_head_dim
        return model.num_layers * per_layer * model.kv_element_bytes
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * model.kv_element_bytes


def _attention_params(m: ModelSpec) -> int:
    h, heads = m.hidden_size, m.num_attention_heads
    if m.is_mla:
        q_width = heads * m.qk_dim
        q = (
            h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * q_width
            if m.q_lora_rank
            else h * q_width
        )
        kv_a = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
        kv_b = m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim)
        return q + kv_a + kv_b + heads * m.v_head_dim * h
    return h * heads * m.head_dim * 2 + 2 * h * m.num_kv_heads * m.head_dim


def estimate_params(m: ModelSpec) -> tuple[int, int]:
    """(total, active) parameters derived from the shape alone (gated MLPs, RMSNorm, no biases).

    Within about 1% of the published counts for the presets; used for ``config.json`` models.
    """
    h = m.hidden_size
    attention = _attention_params(m) + 2 * h  # two RMSNorms per layer
    dense_mlp = 3 * h * m.intermediate_size
    total = active = m.embedding_params + h  # final norm
    for layer in range(m.num_layers):
        total += attention
        active += attention
        if not m.is_moe or layer < m.first_dense_layers:
            total += dense_mlp
            active += dense_mlp
            continue
        expert = 3 * h * (m.moe_intermediate_size or m.intermediate_size)
        router = h * m.num_experts
        total += expert * (m.num_experts + m.num_shared_experts) + router
        active += expert * (m.experts_per_token + m.num_shared_experts) + router
    return total, active


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248,
                  display_name="Llama 3.1 8B"),
        ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, 70_553_706_496,
                  display_name="Llama 3.1 70B"),
        ModelSpec("llama-3.1-405b", 126, 16384, 128, 8, 128, 53248, 128256, 405_853_388_800,
                  display_name="Llama 3.1 405B"),
        ModelSpec("qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, 7_615_616_512,
                  display_name="Qwen2.5 7B"),
        ModelSpec("qwen2.5-72b", 80, 8192, 64, 8, 128, 29568, 152064, 72_706_203_648,
                  display_name="Qwen2.5 72B"),
        ModelSpec("qwen3-32b", 64, 5120, 64, 8, 128, 25600, 151936, 32_762_123_264,
                  display_name="Qwen3 32B"),
        ModelSpec("qwen3-30b-a3b", 48, 2048, 32, 4, 128, 6144, 151936, 30_532_122_624,
                  active_params=3_345_000_000, num_experts=128, experts_per_token=8,
                  moe_intermediate_size=768, display_name="Qwen3 30B-A3B (MoE)"),
        ModelSpec("mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, 46_702_792_704,
                  active_params=12_879_925_248, num_experts=8, experts_per_token=2,
                  display_name="Mixtral 8x7B (MoE)"),
        ModelSpec("deepseek-v3", 61, 7168, 128, 1, 576, 18432, 129280, 671_026_419_200,
                  dtype_bytes=1, kv_dtype_bytes=2, active_params=37_000_000_000,
                  num_experts=256, experts_per_token=8, moe_intermediate_size=2048,
                  num_shared_experts=1, first_dense_layers=3, kv_lora_rank=512,
                  qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=1536,
                  display_name="DeepSeek-V3 (MoE, MLA, fp8 weights)"),
    )
}  # fmt: skip

DEFAULT_MODEL = "llama-3.1-8b"


#: The Hugging Face repository a preset's shape comes from (for emitted manifests).
HF_REPOS: dict[str, str] = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B-Instruct",
    "llama-3.1-405b": "meta-llama/Llama-3.1-405B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B-Instruct",
    "qwen3-32b": "Qwen/Qwen3-32B",
    "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "deepseek-v3": "deepseek-ai/DeepSeek-V3",
}


def preset_for_model_name(name: str) -> str | None:
    """The preset whose shape a served model name has, or None.

    Accepts preset keys and Hugging Face ids in their usual spellings
    (``meta-llama/Llama-3.1-70B-Instruct``, ``Meta-Llama-3.1-8B``, ``Qwen/Qwen3-32B``); the
    operator uses it when a DisaggDeployment gives no ``model.architecture``.
    """
    key = name.strip().lower().rstrip("/")
    key = key.rsplit("/", 1)[-1].removeprefix("meta-")
    for suffix in ("-instruct", "-fp8", "-v0.1", "-instruct", "-chat", "-base"):
        key = key.removesuffix(suffix)
    return key if key in MODELS else None

"""Model folders for real vLLM without weights: ``config.json`` + a tokenizer, served with
``--load-format dummy`` (vLLM fills the weights with random values on the GPU).

    python bench/gpu/models.py OUT_DIR        # needs only the ``tokenizers`` package

Two shapes, one tokenizer recipe:

* ``tiny``: a 4-layer Llama (hidden 256, GQA 4/2 heads of 64, vocab 8,192) -- starts in seconds,
  for the P/D protocol, fault and gateway tests (2 KiB of KV per token);
* ``llama-3.1-8b``: Llama-3.1-8B's published shape (32 layers, hidden 4,096, GQA 32/8, vocab
  128,256, 128 KiB of KV per token) -- for timings that mean something.

Nothing is downloaded.  The byte-level BPE is trained here on the Python standard library's own
sources (always present, so the result only depends on the Python version), and its vocabulary is
padded to the model's size with plain tokens (`` t<id>``) that no merge produces but that decode
to visible text -- random weights sample any id, and every sampled token must show up as text in
the client's stream, or inter-token gaps could not be measured.  The Llama-3 special tokens sit
at the end (``<|begin_of_text|>`` = vocab - 256), with a Llama-3-style chat template.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

#: Tokens the BPE learns from the corpus; the rest of the vocabulary is padding.
TRAINED_VOCAB = 8192
SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
#: Llama 3 keeps 256 ids for special tokens at the end of the vocabulary.
SPECIAL_SLOTS = 256
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] "
    "+ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 8192 + SPECIAL_SLOTS,
        "max_position_embeddings": 16384,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    },
    # Llama-3.1-8B-Instruct's config.json, less what only training reads.
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": False,
    },
}


def corpus() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = []
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py")))[:400]:
        with open(path, encoding="utf-8", errors="ignore") as fh:
            texts.append(fh.read())
    return texts


def train_merges() -> tuple[dict[str, int], list[Any]]:
    """Vocabulary and merges of a byte-level BPE of ``TRAINED_VOCAB`` tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return dict(model["vocab"]), list(model["merges"])


def write_tokenizer(out: Path, vocab_size: int, trained: tuple[dict[str, int], list[Any]]) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab, merges = dict(trained[0]), trained[1]
    plain = vocab_size - SPECIAL_SLOTS
    for token_id in range(len(vocab), plain):
        vocab[f"\u0120t{token_id}"] = token_id  # "Ġ" is a space in byte-level BPE
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = SPECIAL + [f"<|reserved_special_token_{i}|>" for i in range(SPECIAL_SLOTS - 5)]
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    if tok.get_vocab_size() != vocab_size or bos != plain:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} ids, bos {bos}; want {plain}")
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|end_of_text|>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {
        "bos_token": config["bos_token"],
        "eos_token": config["eos_token"],
        "pad_token": config["pad_token"],
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def model_config(shape: str) -> dict[str, Any]:
    dims = SHAPES[shape]
    plain = dims["vocab_size"] - SPECIAL_SLOTS
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
        "bos_token_id": plain,
        "eos_token_id": plain + 4,
        **dims,
    }


def write_models(root: Path) -> list[Path]:
    trained = train_merges()
    folders = []
    for shape in SHAPES:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        config = model_config(shape)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_tokenizer(folder, config["vocab_size"], trained)
        folders.append(folder)
    return folders


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    for folder in write_models(out):
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{folder}: {', '.join(sorted(f.name for f in folder.iterdir()))} ({size} bytes)")

"""A small but real Hugging Face tokenizer for tests, the demo and benchmarks, made offline.

Precise routing needs the model's tokenizer files, and nothing here may download one.  So this
module *trains* one with the ``tokenizers`` library -- byte-level BPE over text it generates,
Llama-3-style special tokens (``<|begin_of_text|>`` added in front of every prompt by the
post-processor, header and end-of-turn tokens for chat) -- and writes what a model directory
holds: ``tokenizer.json`` and a ``tokenizer_config.json`` with a Jinja chat template of our own in
Llama 3's shape.  Training is deterministic, so every run (and every process given the same
directory) tokenizes alike; the simulator (``--tokenizer``) and the gateway
(``routing.tokenizerPath``) both read the directory.

    python -m testbed.tokenizer DIR        # writes DIR/tokenizer.json, DIR/tokenizer_config.json
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] | trim }}{% endif %}{% endfor %}{% endif %}{{ '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _corpus(lines: int = 4000, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    syllables = [
        "ka",
        "lo",
        "mi",
        "ne",
        "ru",
        "sa",
        "to",
        "vi",
        "pe",
        "da",
        "qu",
        "zo",
        "the",
        "and",
        "ing",
        "ion",
        "er",
        "st",
        "re",
        "sys",
        "u",
        "long",
        "o",
    ]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    words += [str(n) for n in range(200)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(lines)]


def write_tokenizer(directory: str | Path, vocab_size: int = 4096) -> Path:
    """Train and write the tokenizer files into ``directory`` (created); returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    bos = tokenizer.token_to_id(SPECIAL[0])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL[0]} $A",
        pair=f"{SPECIAL[0]} $A {SPECIAL[0]} $B",
        special_tokens=[(SPECIAL[0], bos)],
    )
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "bos_token": SPECIAL[0],
        "eos_token": SPECIAL[4],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m testbed.tokenizer DIR")
    print(write_tokenizer(sys.argv[1]))

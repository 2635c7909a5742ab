"""Chat tokenizing by pieces between special tokens gives exactly the whole text's ids.

Against the test tokenizer (a real Hugging Face BPE, ``testbed.tokenizer``) and the model
tokenizer's chat template; plus the guards that fall back to whole-text encoding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from disagg.modeltokenizer import ModelTokenizer
from disagg.tokensegments import SegmentedEncoder
from testbed.tokenizer import write_tokenizer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelTokenizer:
    return ModelTokenizer(write_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def _text(rng: random.Random, words: int) -> str:
    alphabet = ["the", "cat", " ", "\n", "Zürich", "42", "x_7", "!", "  ", "\t", "é", "🙂", "--"]
    return "".join(rng.choice(alphabet) + rng.choice(["", " "]) for _ in range(words))


def test_piecewise_ids_equal_whole_text_ids_and_repeats_hit_the_cache(
    model: ModelTokenizer,
) -> None:
    rng = random.Random(5)
    systems = [_text(rng, 300) for _ in range(4)]
    encoder = SegmentedEncoder(model._tokenizer, verify=0, sample=10**9)  # never self-checks
    assert encoder.enabled
    for _ in range(200):
        messages = [
            {"role": "system", "content": rng.choice(systems)},
            {"role": "user", "content": _text(rng, rng.randrange(1, 60))},
            {"role": "assistant", "content": _text(rng, 5)},
            {"role": "user", "content": _text(rng, 3) + "<|eot_id|>" + _text(rng, 3)},
        ]
        text = model.render_chat(messages)
        whole = list(model._tokenizer.encode(text, add_special_tokens=False).ids)
        assert encoder.encode(text) == whole
    assert encoder.hits >= 150  # the system prompts were encoded once each


@dataclass
class _Added:
    content: str
    normalized: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclass
class _Encoding:
    ids: list[int]


class _FirstPieceDiffers:
    """A tokenizer that marks the start of its input (as a Metaspace ``first`` prefix does)."""

    def __init__(self, **flags: bool) -> None:
        self.added = {1: _Added("<s>", **flags)}
        self.calls = 0

    def get_added_tokens_decoder(self) -> dict[int, _Added]:
        return self.added

    def encode(self, text: str, add_special_tokens: bool = False) -> _Encoding:
        self.calls += 1
        ids = [0]  # "start of input"
        for part in text.split("<s>"):
            ids += [ord(c) for c in part] + [1]
        return _Encoding(ids[:-1])


def test_a_difference_from_whole_text_switches_the_cache_off_and_answers_whole() -> None:
    fake = _FirstPieceDiffers()
    encoder = SegmentedEncoder(fake, min_chars=1)
    text = "a" * 10 + "<s>" + "b" * 10
    assert encoder.encode(text) == fake.encode(text).ids
    assert not encoder.enabled


@pytest.mark.parametrize("flag", ["normalized", "lstrip", "rstrip", "single_word"])
def test_added_tokens_with_their_own_rules_are_never_split_on(flag: str) -> None:
    encoder = SegmentedEncoder(_FirstPieceDiffers(**{flag: True}))
    assert not encoder.enabled
    assert encoder.encode("x<s>y") == _FirstPieceDiffers().encode("x<s>y").ids


def test_the_cache_is_bounded(model: ModelTokenizer) -> None:
    encoder = SegmentedEncoder(model._tokenizer, max_pieces=3, min_chars=1)
    for i in range(10):
        encoder.encode(f"<|start_header_id|>piece {i}<|eot_id|>")
    assert len(encoder._pieces) == 3


def test_model_tokenizer_chat_ids_unchanged(model: ModelTokenizer) -> None:
    messages = [{"role": "system", "content": "be brief " * 80}, {"role": "user", "content": "hi"}]
    text = model.render_chat(messages)
    expected = list(model._tokenizer.encode(text, add_special_tokens=False).ids)
    assert model.encode_chat(messages) == expected
    assert model.encode_chat(messages) == expected  # second time from the cache

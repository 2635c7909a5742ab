"""A deterministic, documented tokenizer and text generator.

The simulator needs token counts that a test can predict by hand and token ids that make prefix
caching behave like vLLM's (same prefix text -> same leading blocks).  It does not need a real
vocabulary, so the rule is deliberately simple (docs/simulator.md repeats it):

* a token is a run of optional whitespace followed by either up to 8 word characters
  (letters, digits, ``_``) or one other non-space character; trailing whitespace is one token;
* its id is the first 4 bytes of BLAKE2b over the token's UTF-8 bytes, modulo ``VOCAB_SIZE``.

So ``"Hello, world!"`` is 4 tokens (``Hello`` ``,`` `` world`` ``!``), and
``"internationalization"`` is 3 (``internat`` ``ionaliza`` ``tion``).

Chat messages are rendered with a fixed template before tokenizing (``render_chat``).  Output text
is a pure function of the prompt's token ids and the position, so two runs (or a prefill and a
decode worker) produce identical text for the same request.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

from disagg.prompttext import render_chat as render_chat
from disagg.prompttext import split_tokens

VOCAB_SIZE = 128_256
"""Llama-3's vocabulary size, so ids look plausible."""


_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has when who will "
    "more no if out so said what up its about into than them can only other new some could "
    "time these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should"
)
_WORDS = tuple(_WORD_TEXT.split())


#: The token rule and chat template live in ``disagg.prompttext`` (the gateway uses them too).
split = split_tokens


@functools.lru_cache(maxsize=65536)
def token_id(piece: str) -> int:
    digest = hashlib.blake2b(piece.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "big") % VOCAB_SIZE


def encode(text: str) -> list[int]:
    """Token ids of ``text`` under the rule in the module docstring."""
    return [token_id(piece) for piece in split(text)]


def output_token(prompt_ids: Sequence[int], position: int) -> str:
    """The ``position``-th generated token's text: a leading space and a common English word,
    chosen by a hash of the prompt so different prompts read differently."""
    return output_token_from_seed(output_seed(prompt_ids), position)


def output_token_from_seed(seed: int, position: int) -> str:
    """:func:`output_token` with the prompt's :func:`output_seed` computed once per request."""
    return " " + _WORDS[(seed + position * 7919) % len(_WORDS)]


def output_seed(prompt_ids: Sequence[int]) -> int:
    h = hashlib.blake2b(digest_size=8)
    for tid in prompt_ids[-64:]:
        h.update(tid.to_bytes(4, "big"))
    h.update(len(prompt_ids).to_bytes(4, "big"))
    return int.from_bytes(h.digest(), "big")

"""From a request body to what the router hashes: approximate tokens and chained block hashes.

The gateway cannot run the model's tokenizer (that would make it model-specific and slow), so it
approximates tokens with a fixed rule -- a run of optional whitespace plus up to 8 word characters
or one other character, roughly what a BPE tokenizer produces for English -- and groups them into
blocks of the engine's ``--block-size``.  Each full block's hash chains its parent's, as in vLLM's
prefix cache (a radix tree over blocks): two prompts share block *k* only if they share blocks
0..k.  The counts are approximate, the prefix structure is exact, which is what affinity needs.

Prompts given as token ids are used as they are.  Chat messages are flattened with a fixed
``<|role|>\\ncontent\\n`` template so that conversations sharing a system prompt share blocks.

The request path calls ``prompt_blocks``, which gives the same count and hashes as
``block_hashes(prompt_tokens(body))`` without a string per token: one regular-expression match
per *block* of tokens, then the few tokens after the last full block.  The block pattern spells
the token rule with possessive quantifiers, so that the repetition cannot re-split a token: a
token is a word token (whitespace, then a word or another character) except the text's trailing
whitespace, which can only be its last token, so a block is ``block_size - 1`` word tokens and
then a word token or that trailing whitespace.  Nothing in it can give back a character, so it
splits exactly as ``TOKEN_PATTERN`` does (the tests compare the two on odd text), with a third
less work for the engine than an atomic group per token.  ASCII text (most prompts) is matched
with the same classes spelt out as character sets, another third less.  Each block's hash
starts from a copy of one personalised ``blake2b`` (a new one's keyword arguments cost a third
of the hash).  For the benchmark's 1.6 kB prompts that is 28 us (50 with an atomic group per
token and Unicode classes, 115 with a string per token).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any

from disagg.prompttext import render_chat, split_tokens

Token = str | int

#: The shared tokenizing rule and chat template (the simulator's, see ``disagg.prompttext``).
approximate_tokens = split_tokens
chat_text = render_chat


def prompt_tokens(body: Mapping[str, Any]) -> list[str] | list[int]:
    """Approximate tokens of a completions or chat body (the first prompt of a batch)."""
    text = _prompt_text(body)
    return approximate_tokens(text) if isinstance(text, str) else text


def block_hashes(tokens: Sequence[Token], block_size: int) -> tuple[int, ...]:
    """Chained 64-bit hashes of every full block of ``tokens``.

    Text tokens (all of a prompt's are text, or all are ids) are hashed as the block's text:
    the tokens concatenate to it and split from it again unchanged, so equal text under an
    equal parent is an equal block -- one join per block instead of a ``repr`` per token
    (the request path hashes every prompt).  Their own ``person`` keeps them apart from
    token-id blocks."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    hashes: list[int] = []
    parent = b"\x00" * 8
    text = bool(tokens) and isinstance(tokens[0], str)
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start : start + block_size]
        if text:
            parent = _text_block(parent, "".join(block))  # type: ignore[arg-type]
        else:
            # One update per block: the same bytes as one update per token and separator (a
            # streaming hash), at a fraction of the calls.
            data = "\x1f".join(map(repr, block)) + "\x1f"
            parent = blake2b(parent + data.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        hashes.append(int.from_bytes(parent, "big"))
    return tuple(hashes)


_TEXT_HASH = blake2b(digest_size=8, person=b"text")
"""The empty hash every text block's hash is copied from (never updated itself)."""


def _text_block(parent: bytes, text: str) -> bytes:
    """The chained hash of a block of text tokens (their concatenation) under ``parent``: the
    one step ``block_hashes`` and ``prompt_blocks`` share, so that they cannot disagree."""
    hasher = _TEXT_HASH.copy()
    hasher.update(parent + text.encode("utf-8", "surrogatepass"))
    return hasher.digest()


#: The character classes of ``disagg.prompttext.TOKEN_PATTERN`` (space, word, other): as
#: written there, and spelt out for ASCII text, where they are the same sets of characters
#: (``\s`` is also the separators 0x1c-0x1f) but one table look-up per character instead of
#: Unicode's category checks -- a third of the matching time.
_UNICODE_CLASSES = (r"\s", r"\w", r"[^\w\s]")
_ASCII_CLASSES = (r"[\t-\r\x1c-\x20]", r"[0-9A-Za-z_]", r"[^0-9A-Za-z_\t-\r\x1c-\x20]")


@functools.lru_cache(maxsize=8)
def _blocks_pattern(block_size: int, ascii: bool = False) -> re.Pattern[str]:
    """A full block of tokens (group 1), or else one token (the tail after the last block).

    The token rule in the two shapes a block needs (the module docstring says why): a token
    ending in a word or another character, and the trailing whitespace."""
    space, word, other = _ASCII_CLASSES if ascii else _UNICODE_CLASSES
    word_token, trailing_space = f"{space}*+(?:{word}{{1,8}}+|{other})", f"{space}++"
    block = f"(?:{word_token}){{{block_size - 1}}}(?:{word_token}|{trailing_space})"
    return re.compile(f"({block})|{word_token}|{trailing_space}")


def _prompt_text(body: Mapping[str, Any]) -> str | list[int]:
    """The text ``prompt_tokens`` splits, or the token ids it returns as they are."""
    if "messages" in body:
        messages = body.get("messages")
        return chat_text(messages if isinstance(messages, list) else [])
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return [t for t in prompt if isinstance(t, int)]
        if isinstance(first, str):
            return first
        if isinstance(first, list):
            return [t for t in first if isinstance(t, int)]
    return []


def prompt_blocks(body: Mapping[str, Any], block_size: int) -> tuple[int, tuple[int, ...]]:
    """``(len(tokens), block_hashes(tokens, block_size))`` of ``tokens = prompt_tokens(body)``,
    computed block by block (see the module's docstring)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    text = _prompt_text(body)
    if not isinstance(text, str):
        return len(text), block_hashes(text, block_size)
    matches = _blocks_pattern(block_size, text.isascii()).findall(text)
    # The full blocks come first: a lone token matches only where fewer than a block are left.
    tail = matches.count("")
    hashes: list[int] = []
    parent = b"\x00" * 8
    for block in matches[: len(matches) - tail]:
        parent = _text_block(parent, block)
        hashes.append(int.from_bytes(parent, "big"))
    return len(hashes) * block_size + tail, tuple(hashes)

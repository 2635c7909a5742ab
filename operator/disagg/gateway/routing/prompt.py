"""From a request body to what the router hashes: approximate tokens and chained block hashes.

The gateway cannot run the model's tokenizer (that would make it model-specific and slow), so it
approximates tokens with a fixed rule -- a run of optional whitespace plus up to 8 word characters
or one other character, roughly what a BPE tokenizer produces for English -- and groups them into
blocks of the engine's ``--block-size``.  Each full block's hash chains its parent's, as in vLLM's
prefix cache (a radix tree over blocks): two prompts share block *k* only if they share blocks
0..k.  The counts are approximate, the prefix structure is exact, which is what affinity needs.

Prompts given as token ids are used as they are.  Chat messages are flattened with a fixed
``<|role|>\\ncontent\\n`` template so that conversations sharing a system prompt share blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from disagg.prompttext import render_chat, split_tokens

Token = str | int

#: The shared tokenizing rule and chat template (the simulator's, see ``disagg.prompttext``).
approximate_tokens = split_tokens
chat_text = render_chat


def prompt_tokens(body: Mapping[str, Any]) -> list[Token]:
    """Approximate tokens of a completions or chat body (the first prompt of a batch)."""
    if "messages" in body:
        messages = body.get("messages")
        return list(approximate_tokens(chat_text(messages if isinstance(messages, list) else [])))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return list(approximate_tokens(prompt))
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return [t for t in prompt if isinstance(t, int)]
        if isinstance(first, str):
            return list(approximate_tokens(first))
        if isinstance(first, list):
            return [t for t in first if isinstance(t, int)]
    return []


def block_hashes(tokens: Sequence[Token], block_size: int) -> tuple[int, ...]:
    """Chained 64-bit hashes of every full block of ``tokens``."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    hashes: list[int] = []
    parent = b"\x00" * 8
    for start in range(0, len(tokens) - block_size + 1, block_size):
        # One update per block: the same bytes as one update per token and separator (a
        # streaming hash), at a fraction of the calls.
        text = "\x1f".join(map(repr, tokens[start : start + block_size])) + "\x1f"
        h = hashlib.blake2b(parent, digest_size=8)
        h.update(text.encode("utf-8"))
        parent = h.digest()
        hashes.append(int.from_bytes(parent, "big"))
    return tuple(hashes)

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
    if "messages" in body:
        messages = body.get("messages")
        return approximate_tokens(chat_text(messages if isinstance(messages, list) else []))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return approximate_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return [t for t in prompt if isinstance(t, int)]
        if isinstance(first, str):
            return approximate_tokens(first)
        if isinstance(first, list):
            return [t for t in first if isinstance(t, int)]
    return []


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
            data = "".join(block)  # type: ignore[arg-type]
            h = blake2b(parent, digest_size=8, person=b"text")
        else:
            # One update per block: the same bytes as one update per token and separator (a
            # streaming hash), at a fraction of the calls.
            data = "\x1f".join(map(repr, block)) + "\x1f"
            h = blake2b(parent, digest_size=8)
        h.update(data.encode("utf-8", "surrogatepass"))
        parent = h.digest()
        hashes.append(int.from_bytes(parent, "big"))
    return tuple(hashes)

"""The KV cache as vLLM's block manager sees it: fixed-size blocks, a prefix cache, LRU eviction.

A block holds ``block_size`` tokens.  A *full* block gets a chained hash (its parent's hash and
its own token ids), and a later request whose prompt starts with the same tokens reuses those
blocks instead of recomputing them.  Freed blocks with a hash stay cached until space is needed;
they are then evicted least-recently-freed first.  The simulator counts exactly what vLLM
counts (queries and hits in tokens, usage as used/total blocks), so routing on these signals
behaves as it would on a real worker.

Block ids start at 1 (vLLM reserves 0 as the null block).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained 64-bit hashes of every full block of ``token_ids``."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hashlib.blake2b(parent.to_bytes(8, "big"), digest_size=8)
        for tid in token_ids[start : start + block_size]:
            h.update(tid.to_bytes(4, "big"))
        parent = int.from_bytes(h.digest(), "big")
        hashes.append(parent)
    return hashes


class KVCache:
    """Block allocator with reference counts and a prefix cache."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(1, num_blocks + 1))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref 0 but hashed, LRU first
        self._ref: dict[int, int] = {}
        self._hash_of: dict[int, int] = {}
        self._block_of: dict[int, int] = {}

    # -- queries ---------------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        return len(self._ref)

    @property
    def available_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """``vllm:kv_cache_usage_perc``: fraction (0..1) of blocks referenced by requests."""
        return len(self._ref) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix_blocks(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are in the cache (no side effects)."""
        n = 0
        for h in hashes:
            if h not in self._block_of:
                break
            n += 1
        return n

    # -- allocation ------------------------------------------------------------------------
    def acquire(self, token_ids: Sequence[int]) -> tuple[list[int], int] | None:
        """Blocks for a prompt: cached prefix blocks plus fresh ones for the rest.

        Returns ``(block_ids, cached_tokens)`` or ``None`` when there is not enough free space
        (nothing is changed then).  Like vLLM, at least the last prompt token is always
        recomputed, so a fully cached prompt reports one block less of hits.
        """
        hashes = block_hashes(token_ids, self.block_size)
        hit = self.cached_prefix_blocks(hashes)
        if hit * self.block_size >= len(token_ids):
            hit = max(0, (len(token_ids) - 1) // self.block_size)
        hit_blocks = [self._block_of[h] for h in hashes[:hit]]
        need = self.blocks_for(len(token_ids)) - hit
        reusable_hits = sum(1 for b in hit_blocks if b in self._evictable)
        if self.available_blocks - reusable_hits < need:
            return None
        for b in hit_blocks:
            self._take(b)
        fresh = [self._pop_free() for _ in range(need)]
        return hit_blocks + fresh, hit * self.block_size

    def grow(self, blocks: list[int], num_tokens: int) -> bool:
        """Append blocks until ``blocks`` can hold ``num_tokens``; False if space ran out."""
        while len(blocks) * self.block_size < num_tokens:
            if not self.available_blocks:
                return False
            blocks.append(self._pop_free())
        return True

    def commit(self, blocks: Sequence[int], token_ids: Sequence[int]) -> None:
        """Register the full blocks of computed ``token_ids`` in the prefix cache."""
        for block, h in zip(blocks, block_hashes(token_ids, self.block_size), strict=False):
            if h in self._block_of or block in self._hash_of:
                continue
            self._hash_of[block] = h
            self._block_of[h] = block

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; cached ones become evictable (tail first)."""
        for b in reversed(blocks):
            count = self._ref.get(b, 0) - 1
            if count > 0:
                self._ref[b] = count
                continue
            self._ref.pop(b, None)
            if b in self._hash_of:
                self._evictable[b] = None
            else:
                self._free.append(b)

    def reset_prefix_cache(self) -> None:
        """Forget every cached hash (vLLM's ``/reset_prefix_cache``)."""
        for b in list(self._evictable):
            self._free.append(b)
        self._evictable.clear()
        self._hash_of.clear()
        self._block_of.clear()

    # -- internals -------------------------------------------------------------------------
    def _take(self, block: int) -> None:
        self._evictable.pop(block, None)
        self._ref[block] = self._ref.get(block, 0) + 1

    def _pop_free(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            h = self._hash_of.pop(block)
            del self._block_of[h]
        self._ref[block] = 1
        return block

"""The KV cache as vLLM's block manager sees it: fixed-size blocks, a prefix cache, LRU eviction.

A block holds ``block_size`` tokens.  A *full* block gets a chained hash (its parent's hash and
its own token ids), and a later request whose prompt starts with the same tokens reuses those
blocks instead of recomputing them.  Freed blocks with a hash stay cached until space is needed;
they are then evicted least-recently-freed first.  The simulator counts exactly what vLLM
counts (queries and hits in tokens, usage as used/total blocks), so routing on these signals
behaves as it would on a real worker.

The hashes are vLLM's own (``disagg.blockhash``, the configured ``--prefix-caching-hash-algo``),
and with ``record_events`` the cache notes what vLLM's block pool would publish: a
``BlockStored`` per run of newly cached blocks (parent = the block before it), a ``BlockRemoved``
per evicted block, ``AllBlocksCleared`` on a reset.  The engine takes them once per step
(:meth:`take_events`) and hands them to the publisher.

Blocks also carry what is *in* them, for the P/D failure modes that matter: a *content tag* per
block (a chained hash of the tokens it holds, the partial last block included) that a decode
worker compares with what its prompt needs after a pull, and a *taint* -- KV pulled from blocks a
prefill worker had already reused for another prompt.  Real NIXL reads whatever the block ids
hold, so such a pull "succeeds" and the decode worker caches the foreign KV under its own prompt's
hashes; a tainted block passes its taint to every later request that hits it in the prefix cache
(FAULTS.md: the same prompt later returns the same wrong text).  A block loses its taint when it
is reused.

Block ids start at 1 (vLLM reserves 0 as the null block).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict, deque
from collections.abc import Sequence

from disagg.blockhash import BlockHasher, external
from disagg.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


def _chain(parent: int, tokens: Sequence[int], partial: bool = False) -> int:
    h = hashlib.blake2b(parent.to_bytes(8, "big"), digest_size=8)
    for tid in tokens:
        h.update(tid.to_bytes(8, "big", signed=True))
    if partial:
        h.update(b"partial")
    return int.from_bytes(h.digest(), "big")


def content_tags(token_ids: Sequence[int], block_size: int) -> list[int]:
    """What each block of a prompt holds: a chained tag per full block, then one for the partial
    last block (if any).  The simulator's own notion, apart from the prefix cache's hashes."""
    tags: list[int] = []
    parent = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = _chain(parent, token_ids[start : start + block_size])
        tags.append(parent)
    rest = len(token_ids) % block_size
    if rest:
        tags.append(_chain(parent, token_ids[-rest:], partial=True))
    return tags


class KVCache:
    """Block allocator with reference counts and a prefix cache."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        hasher: BlockHasher | None = None,
        record_events: bool = False,
        int_event_hashes: bool = True,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.hasher = hasher or BlockHasher("sha256")
        self.record_events = record_events
        self.int_event_hashes = int_event_hashes
        """``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``: publish low 64 bits (default) or digests."""
        self._events: list[KVEvent] = []
        self._free: deque[int] = deque(range(1, num_blocks + 1))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref 0 but hashed, LRU first
        self._ref: dict[int, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._content: dict[int, int] = {}  # block -> content tag of what was last written
        self._taint: dict[int, int] = {}  # block -> seed of the foreign KV it holds
        self._generated = itertools.count(1)

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

    def valid_block(self, block: int) -> bool:
        return 1 <= block <= self.num_blocks

    def contents(self, blocks: Sequence[int]) -> list[int | None]:
        """The content tag of each block (``None`` if nothing was ever written there)."""
        return [self._content.get(b) for b in blocks]

    def taint_of(self, blocks: Sequence[int]) -> int:
        """The foreign-KV seed the first tainted block among ``blocks`` carries, else 0."""
        for b in blocks:
            taint = self._taint.get(b)
            if taint:
                return taint
        return 0

    def block_hashes(self, token_ids: Sequence[int]) -> list[bytes]:
        """vLLM's chained hashes of every full block of ``token_ids``."""
        return self.hasher.chain(token_ids, self.block_size)

    def cached_prefix_blocks(self, hashes: Sequence[bytes]) -> int:
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
        hashes = self.block_hashes(token_ids)
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
        for block, tag in zip(fresh, content_tags(token_ids, self.block_size)[hit:], strict=False):
            self._content[block] = tag
        return hit_blocks + fresh, hit * self.block_size

    def grow(self, blocks: list[int], num_tokens: int) -> bool:
        """Append blocks until ``blocks`` can hold ``num_tokens``; False if space ran out."""
        while len(blocks) * self.block_size < num_tokens:
            if not self.available_blocks:
                return False
            block = self._pop_free()
            self._content[block] = -next(self._generated)  # generated tokens: never a prompt's
            blocks.append(block)
        return True

    def taint(self, blocks: Sequence[int], seed: int) -> None:
        """Mark ``blocks`` as holding foreign KV (a pull of reused blocks)."""
        for b in blocks:
            self._taint[b] = seed

    def commit(self, blocks: Sequence[int], token_ids: Sequence[int]) -> None:
        """Register the full blocks of computed ``token_ids`` in the prefix cache."""
        hashes = self.block_hashes(token_ids)
        run: list[int] = []  # indexes of a run of newly cached blocks (one BlockStored)
        for i, (block, h) in enumerate(zip(blocks, hashes, strict=False)):
            if h in self._block_of or block in self._hash_of:
                self._stored(run, hashes, token_ids)
                run = []
                continue
            self._hash_of[block] = h
            self._block_of[h] = block
            run.append(i)
        self._stored(run, hashes, token_ids)

    def cached_keys(self) -> list[int]:
        """The 64-bit keys of every block in the prefix cache (what events have announced)."""
        return [external(h) for h in self._block_of]

    def take_events(self) -> list[KVEvent]:
        """The events since the last call (what one vLLM step would publish)."""
        events, self._events = self._events, []
        return events

    def _wire(self, digest: bytes) -> int | bytes:
        return external(digest) if self.int_event_hashes else digest

    def _stored(self, run: list[int], hashes: Sequence[bytes], token_ids: Sequence[int]) -> None:
        if not run or not self.record_events:
            return
        first, size = run[0], self.block_size
        self._events.append(
            BlockStored(
                block_hashes=[self._wire(hashes[i]) for i in run],
                parent_block_hash=self._wire(hashes[first - 1]) if first else None,
                token_ids=list(token_ids[first * size : (run[-1] + 1) * size]),
                block_size=size,
            )
        )

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
        self._taint.clear()
        if self.record_events:
            self._events.append(AllBlocksCleared())

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
            if self.record_events:
                self._events.append(BlockRemoved([self._wire(h)]))
        self._taint.pop(block, None)
        self._ref[block] = 1
        return block

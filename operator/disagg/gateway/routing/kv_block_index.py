"""What every worker's prefix cache holds, as its own KV events say: block hash -> workers.

Fed by ``disagg.gateway.kvsubscriber`` with the engines' ``BlockStored`` / ``BlockRemoved`` /
``AllBlocksCleared`` events, read by the ``precise-prefix`` scorer and the selective decider.
Keys are the 64-bit block keys vLLM publishes (``disagg.blockhash.external``), values a bitmask
of *streams* (one per worker and data-parallel rank; a bit per stream keeps the entry small
whatever the pool size: ~150 bytes per key with one holder, ~110 more per extra holder, as
measured with tracemalloc), and each stream keeps the set of its keys so that a cleared cache
or a departed worker costs time proportional to its own blocks.

Memory is bounded by ``max_blocks`` keys: past it, the least recently stored key is dropped for
every worker.  That only makes the index forget a block an engine may still hold (a missed hit,
the approximate index's failure mode), never claim one it does not.

A stream is *synced* while its event stream is known to be complete (connected, no unfilled gap);
the scorer only trusts synced streams and falls back to the approximate index for the others.
Because every gateway replica applies the same events in the same order, replicas hold the same
index (``fingerprint`` lets a test compare them).  Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from disagg.blockhash import fingerprint


@dataclass
class _Stream:
    bit: int
    keys: set[int]
    synced: bool = False


class KVBlockIndex:
    """Block keys -> streams holding them; streams grouped by worker url."""

    def __init__(self, max_blocks: int = 262_144) -> None:
        if max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        self.max_blocks = max_blocks
        self._holders: OrderedDict[int, int] = OrderedDict()  # key -> bitmask of streams
        self._streams: dict[tuple[str, int], _Stream] = {}  # (worker url, dp rank)
        self._free_bits: list[int] = []
        self._next_bit = 0
        self.evicted = 0
        """Keys dropped to stay within ``max_blocks`` (a counter for metrics)."""

    # -- writes (the subscriber) -------------------------------------------------------------------
    def _stream(self, worker: str, rank: int) -> _Stream:
        stream = self._streams.get((worker, rank))
        if stream is None:
            bit = self._free_bits.pop() if self._free_bits else self._next_bit
            self._next_bit = max(self._next_bit, bit + 1)
            stream = self._streams[(worker, rank)] = _Stream(1 << bit, set())
        return stream

    def stored(self, worker: str, keys: Iterable[int], rank: int = 0) -> None:
        stream = self._stream(worker, rank)
        holders = self._holders
        for key in keys:
            mask = holders.pop(key, 0)
            holders[key] = mask | stream.bit  # re-inserted: now the most recently stored
            stream.keys.add(key)
        while len(holders) > self.max_blocks:
            key, mask = holders.popitem(last=False)
            self.evicted += 1
            for other in self._streams.values():
                if mask & other.bit:
                    other.keys.discard(key)

    def removed(self, worker: str, keys: Iterable[int], rank: int = 0) -> None:
        stream = self._streams.get((worker, rank))
        if stream is None:
            return
        for key in keys:
            self._drop(stream, key)

    def cleared(self, worker: str, rank: int = 0) -> None:
        """Everything this stream's engine cached is gone (a reset, a restart, an unfilled gap)."""
        stream = self._streams.get((worker, rank))
        if stream is not None:
            for key in list(stream.keys):
                self._drop(stream, key)

    def set_synced(self, worker: str, synced: bool, rank: int = 0) -> None:
        self._stream(worker, rank).synced = synced

    def forget(self, worker: str) -> None:
        """A worker went away: drop all its streams."""
        for worker_rank in [k for k in self._streams if k[0] == worker]:
            stream = self._streams[worker_rank]
            self.cleared(*worker_rank)
            del self._streams[worker_rank]
            self._free_bits.append(stream.bit.bit_length() - 1)

    def _drop(self, stream: _Stream, key: int) -> None:
        stream.keys.discard(key)
        mask = self._holders.get(key)
        if mask is None:
            return
        mask &= ~stream.bit
        if mask:
            self._holders[key] = mask
        else:
            del self._holders[key]

    # -- reads (the scorer, the decider) -------------------------------------------------------
    def synced(self, worker: str) -> bool:
        """Whether every known stream of ``worker`` is complete (False for an unknown worker)."""
        streams = [s for (w, _), s in self._streams.items() if w == worker]
        return bool(streams) and all(s.synced for s in streams)

    def matched_blocks(self, worker: str, keys: Sequence[int]) -> int:
        """Longest run of leading ``keys`` cached on one of ``worker``'s engines."""
        best = 0
        holders = self._holders
        for (w, _), stream in self._streams.items():
            if w != worker:
                continue
            count = 0
            for key in keys:
                if not holders.get(key, 0) & stream.bit:
                    break
                count += 1
            best = max(best, count)
        return best

    def workers(self) -> list[str]:
        return sorted({w for w, _ in self._streams})

    def blocks(self, worker: str) -> int:
        return sum(len(s.keys) for (w, _), s in self._streams.items() if w == worker)

    def __len__(self) -> int:
        return len(self._holders)

    def fingerprint(self, worker: str) -> str:
        """A digest of the keys ``worker`` holds (equal on replicas that saw the same events)."""
        return fingerprint(k for (w, _), s in self._streams.items() if w == worker for k in s.keys)

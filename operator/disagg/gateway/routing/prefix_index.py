"""An approximate, per-worker index of the prompt blocks each worker has recently seen.

The gateway does not see a worker's cache; it remembers where it sent each prompt's blocks.  Each
worker gets a bounded LRU set of block hashes (``capacity_blocks`` approximates how many blocks
the worker's prefix cache keeps); recording a prompt refreshes its blocks.  Because hashes are
chained, the cached prefix of a new prompt on a worker is the longest run of its leading blocks
present in that worker's set.  The index is a hint: a wrong guess costs a cache miss, not an error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class PrefixIndex:
    """Block hashes per worker url, LRU-bounded per worker."""

    def __init__(self, capacity_blocks: int = 16384) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be >= 1")
        self.capacity_blocks = capacity_blocks
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def record(self, url: str, hashes: Sequence[int]) -> None:
        """Remember that ``url`` now holds these blocks (most recent last)."""
        blocks = self._blocks.get(url)
        if blocks is None:
            blocks = self._blocks[url] = OrderedDict()
        move = blocks.move_to_end  # bound once: a prompt has dozens of blocks
        for h in hashes:
            blocks[h] = None
            move(h)
        for _ in range(len(blocks) - self.capacity_blocks):
            blocks.popitem(last=False)

    def matched_blocks(self, url: str, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` ``url`` is believed to hold."""
        blocks = self._blocks.get(url)
        if not blocks:
            return 0
        count = 0
        for h in hashes:
            if h not in blocks:
                break
            count += 1
        return count

    def forget(self, url: str) -> None:
        """Drop a worker that went away."""
        self._blocks.pop(url, None)

    def retain(self, urls: Iterable[str]) -> None:
        """Keep only these workers."""
        keep = set(urls)
        for url in [u for u in self._blocks if u not in keep]:
            del self._blocks[url]

    def workers(self) -> list[str]:
        return sorted(self._blocks)

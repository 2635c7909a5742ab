"""vLLM's prefix-cache block hashes, computed outside vLLM: shared by the simulator and the gateway.

vLLM (0.33) names each full KV block by a hash chained over the prompt: block *k*'s hash is
``H((hash of block k-1, tuple(its token ids), extra_keys))``, where block 0's parent is
``NONE_HASH = H(seed)``.  ``H`` is ``--prefix-caching-hash-algo``: ``sha256`` (the default:
SHA-256 of the pickled tuple), ``sha256_cbor`` (SHA-256 of canonical CBOR), ``xxhash`` and
``xxhash_cbor`` (XXH3-128 of the same encodings).  The seed is ``PYTHONHASHSEED`` when set, else the
fixed ``"vllm-none-hash"`` for the SHA-256 algorithms and random bytes per process for the xxhash
ones -- so xxhash hashes can only be matched when every process shares ``PYTHONHASHSEED``.
KV events publish the low 64 bits of each digest as an integer
(``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``, default on) or the whole digest as bytes;
:func:`external` turns either into the same 64-bit key.

Why recompute instead of only echoing vLLM's events: the gateway has to name the blocks of a prompt
*before* any engine has seen it, and the simulator has to publish what vLLM would.  Pickle is
CPython's own (protocol 5 is what vLLM asks for, and CPython's output for a tuple of bytes, ints and
None is stable), the CBOR encoder below is written for exactly the types a block key holds.  The
conformance tier checks both against vLLM's own functions.

Extra keys: ``cache_salt`` (a request field vLLM folds into block 0) is supported; LoRA adapters
and multimodal inputs are not (their blocks simply never match: a cache miss, not an error).
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, get_args

HashAlgo = Literal["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]
HASH_ALGOS: tuple[str, ...] = get_args(HashAlgo)
DEFAULT_SEED = "vllm-none-hash"
"""vLLM's seed of ``NONE_HASH`` for the SHA-256 algorithms when ``PYTHONHASHSEED`` is unset."""
_MASK64 = (1 << 64) - 1


def external(block_hash: bytes | int) -> int:
    """The 64-bit key of a hash as KV events carry it (an int already, or a whole digest)."""
    if isinstance(block_hash, int):
        return block_hash & _MASK64
    return int.from_bytes(block_hash, "big") & _MASK64


def fingerprint(keys: Iterable[int]) -> str:
    """A short digest of a set of 64-bit block keys: what an engine caches, or what an index
    believes it does, compared in tests without shipping the sets."""
    digest = hashlib.sha256(b"".join(k.to_bytes(8, "big") for k in sorted(set(keys))))
    return digest.hexdigest()[:16]


# -- encodings ------------------------------------------------------------------------------------


def pickled(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _cbor_head(major: int, length: int) -> bytes:
    if length < 24:
        return bytes([major << 5 | length])
    for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if length < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, length)
    raise ValueError(f"CBOR length out of range: {length}")


def cbor(value: Any) -> bytes:
    """Canonical CBOR (RFC 8949 core deterministic) of None, bools, ints, bytes, str, tuples and
    lists -- everything a block key is made of.  Other types raise ``TypeError``."""
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        if value >= 0:
            return _cbor_head(0, value)
        return _cbor_head(1, -1 - value)
    if isinstance(value, bytes):
        return _cbor_head(2, len(value)) + value
    if isinstance(value, str):
        data = value.encode("utf-8")
        return _cbor_head(3, len(data)) + data
    if isinstance(value, tuple | list):
        return _cbor_head(4, len(value)) + b"".join(cbor(item) for item in value)
    raise TypeError(f"no CBOR encoding for {type(value).__name__} in a block key")


def _xxh3_128(data: bytes) -> bytes:
    try:
        import xxhash
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError(
            "prefix caching hash algorithm xxhash needs the xxhash package (pip install xxhash)"
        ) from None
    digest: bytes = xxhash.xxh3_128_digest(data)
    return digest


HASH_FUNCTIONS: dict[str, Callable[[Any], bytes]] = {
    "sha256": lambda value: hashlib.sha256(pickled(value)).digest(),
    "sha256_cbor": lambda value: hashlib.sha256(cbor(value)).digest(),
    "xxhash": lambda value: _xxh3_128(pickled(value)),
    "xxhash_cbor": lambda value: _xxh3_128(cbor(value)),
}


def resolve_seed(algo: str, seed: str | None = None) -> str:
    """The ``NONE_HASH`` seed vLLM would use: explicit, else ``PYTHONHASHSEED``, else the fixed
    default (SHA-256) or fresh random bytes (xxhash: unmatchable by design)."""
    if seed is not None:
        return seed
    env = os.environ.get("PYTHONHASHSEED")
    if env is not None:
        return env
    return os.urandom(32).hex() if algo.startswith("xxhash") else DEFAULT_SEED


class BlockHasher:
    """Chained block hashes for one algorithm and seed, with a bounded memo of recent blocks
    (shared prefixes are hashed once, as vLLM's own per-request cache does)."""

    def __init__(self, algo: str = "sha256", seed: str | None = None, memo: int = 65536) -> None:
        if algo not in HASH_FUNCTIONS:
            raise ValueError(f"unknown prefix caching hash algorithm {algo!r} ({HASH_ALGOS})")
        self.algo = algo
        self.seed = resolve_seed(algo, seed)
        self._hash = HASH_FUNCTIONS[algo]
        self.none_hash = self._hash(self.seed)
        self._memo: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._memo_size = memo

    def block(
        self,
        parent: bytes | None,
        token_ids: Sequence[int],
        extra_keys: tuple[Any, ...] | None = None,
    ) -> bytes:
        """One block's digest (``parent`` None = the first block)."""
        key = (parent or self.none_hash, tuple(token_ids), extra_keys)
        digest = self._memo.get(key)
        if digest is None:
            digest = self._hash(key)
            self._memo[key] = digest
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        return digest

    def chain(
        self,
        token_ids: Sequence[int],
        block_size: int,
        parent: bytes | None = None,
        cache_salt: str | None = None,
    ) -> list[bytes]:
        """Digests of every full block of ``token_ids``; ``parent`` continues an earlier chain,
        ``cache_salt`` is folded into the first block as vLLM does."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        hashes: list[bytes] = []
        for start in range(0, len(token_ids) - block_size + 1, block_size):
            extra = (
                (("cache_salt", cache_salt),)
                if cache_salt and start == 0 and parent is None
                else None
            )
            parent = self.block(parent, token_ids[start : start + block_size], extra)
            hashes.append(parent)
        return hashes

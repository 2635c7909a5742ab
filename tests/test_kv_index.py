"""The KV-event index, the precise-prefix scorer and the event wire format, table-driven.

Pure functions only; what real engines and gateways do with them is in
``test_precise_routing.py``.
"""

from __future__ import annotations

import msgpack
import pytest

from disagg.blockhash import BlockHasher, cbor, external
from disagg.gateway.routing.contracts import Endpoint, RoutingRequest
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.gateway.routing.precise_prefix import PrecisePrefixScorer
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    EventDecodeError,
    decode_batch,
    encode_batch,
)

A, B = "http://a", "http://b"


def _index(*stored: tuple[str, list[int]]) -> KVBlockIndex:
    index = KVBlockIndex()
    for worker, keys in stored:
        index.stored(worker, keys)
        index.set_synced(worker, True)
    return index


@pytest.mark.parametrize(
    ("stored", "removed", "query", "expected"),
    [
        ([1, 2, 3], [], [1, 2, 3, 4], 3),
        ([1, 2, 3], [2], [1, 2, 3], 1),  # a hole ends the prefix
        ([2, 3], [], [1, 2, 3], 0),  # no first block, no prefix
        ([], [], [1], 0),
        ([1, 2], [9], [1, 2], 2),  # removing what was never stored changes nothing
    ],
)
def test_longest_cached_prefix(
    stored: list[int], removed: list[int], query: list[int], expected: int
) -> None:
    index = _index((A, stored))
    index.removed(A, removed)
    assert index.matched_blocks(A, query) == expected


def test_workers_are_independent_and_clear_and_forget_touch_only_theirs() -> None:
    index = _index((A, [1, 2, 3]), (B, [1, 2]))
    assert (index.matched_blocks(A, [1, 2, 3]), index.matched_blocks(B, [1, 2, 3])) == (3, 2)
    index.cleared(A)
    assert (index.matched_blocks(A, [1]), index.matched_blocks(B, [1, 2])) == (0, 2)
    assert index.synced(A)  # a reset is a known state: still synced
    index.forget(B)
    assert index.workers() == [A] and len(index) == 0 and not index.synced(B)


def test_memory_bound_drops_the_least_recently_stored_keys_for_every_worker() -> None:
    index = KVBlockIndex(max_blocks=4)
    index.stored(A, [1, 2, 3])
    index.stored(B, [3, 4])
    index.stored(A, [1])  # refreshed: 2 is now the oldest
    index.stored(B, [5])
    assert len(index) == 4 and index.evicted == 1
    assert index.matched_blocks(A, [1, 2]) == 1  # 2 forgotten: a miss, never a false hit
    assert index.blocks(A) == 2 and index.blocks(B) == 3


def test_a_worker_is_synced_only_when_every_rank_is() -> None:
    index = KVBlockIndex()
    index.set_synced(A, True, rank=0)
    index.set_synced(A, False, rank=1)
    assert not index.synced(A)
    index.stored(A, [1, 2], rank=1)
    index.set_synced(A, True, rank=1)
    assert index.synced(A) and index.matched_blocks(A, [1, 2]) == 2  # best rank counts


def test_fingerprints_ignore_order_and_rank() -> None:
    one, two = _index((A, [3, 1, 2])), KVBlockIndex()
    two.stored(A, [1], rank=1)
    two.stored(A, [2, 3])
    assert one.fingerprint(A) == two.fingerprint(A) != one.fingerprint(B)


@pytest.mark.parametrize(
    ("synced", "engine", "expected_a"),
    [
        (True, (11, 12, 13, 14), 0.75),  # the events say A holds 3 of 4 blocks
        (False, (11, 12, 13, 14), 0.5),  # not synced: the approximate index (2 of 4)
        (True, (), 0.5),  # no engine hashes (no tokenizer): approximate
    ],
)
def test_precise_scorer_and_its_fallback(
    synced: bool, engine: tuple[int, ...], expected_a: float
) -> None:
    kv = _index((A, [11, 12, 13]))
    kv.set_synced(A, synced)
    approximate = PrefixIndex()
    approximate.record(A, [1, 2])
    request = RoutingRequest("r", 64, (1, 2, 3, 4), 16, engine, 64 if engine else 0)
    scores = PrecisePrefixScorer(approximate, kv).score(request, [Endpoint(A), Endpoint(B)])
    assert scores == {A: expected_a, B: 0.0}


def test_events_round_trip_and_older_positional_events_decode() -> None:
    batch = EventBatch(
        1.5,
        [
            BlockStored([1, 2], None, list(range(32)), 16),
            BlockRemoved([b"\x00" * 31 + b"\x02"]),
            AllBlocksCleared(),
        ],
        0,
    )
    assert decode_batch(encode_batch(batch)) == batch
    old = msgpack.packb(
        [2.0, [["BlockStored", [7], 6, list(range(16)), 16, None], ["BlockRemoved", [7]]]]
    )
    events = decode_batch(old).events
    assert events == [
        BlockStored([7], 6, list(range(16)), 16, None, None, None, None),
        BlockRemoved([7], None, None),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb([1.0, [{"type": "Nope"}]]),
        msgpack.packb(
            [1.0, [{"type": "BlockStored", "block_hashes": "x", "token_ids": [], "block_size": 16}]]
        ),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_batch(payload)


def test_block_keys_are_the_low_64_bits_and_cbor_is_canonical() -> None:
    digest = bytes(range(32))
    assert external(digest) == int.from_bytes(digest[-8:], "big") == external(external(digest))
    assert cbor((b"ab", (1, 24, 256, -1), None)) == bytes.fromhex(
        "83426162 84 01 1818 190100 20 f6".replace(" ", "")
    )
    hasher = BlockHasher("sha256")
    assert hasher.chain(list(range(40)), 16) == hasher.chain(list(range(32)), 16)
    assert (
        hasher.chain(list(range(32)), 16, cache_salt="s")[0] != hasher.chain(list(range(32)), 16)[0]
    )

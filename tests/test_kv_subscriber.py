"""The subscriber's sequence-number discipline, on real ZMQ sockets in one process.

The publisher is the simulator's (``KVEventPublisher``, vLLM's wire format and replay socket);
the network loss is the only thing staged: one live message is not sent, as a PUB socket drops
messages for a subscriber past its high-water mark, while the replay buffer still holds it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import zmq
from prometheus_client import CollectorRegistry

from disagg.blockhash import BlockHasher, external
from disagg.gateway.config import KVEventsConfig, KVEventsEndpoint
from disagg.gateway.kvsubscriber import KVEventMetrics, KVEventSubscriber
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.kvevents import BlockStored
from disagg.sim.config import KVEventsConfig as PublisherConfig
from disagg.sim.kvpublisher import KVEventPublisher
from tests.gateway_procs import free_port

WORKER = "http://127.0.0.1:1"
HASHER = BlockHasher("sha256")


class Lossy:
    """Forwards a PUB socket's sends except the sequence numbers in ``drop``."""

    def __init__(self, socket: zmq.Socket[bytes], drop: set[int]) -> None:
        self.socket, self.drop = socket, drop

    def send_multipart(self, frames: Any) -> None:
        if int.from_bytes(frames[1], "big") not in self.drop:
            self.socket.send_multipart(frames)

    def close(self, linger: int = 0) -> None:
        self.socket.close(linger=linger)


def _prompt(n: int) -> tuple[BlockStored, list[int]]:
    """A one-block prompt's BlockStored (real hashes, so the subscriber's check passes)."""
    tokens = [n * 100 + i for i in range(16)]
    key = external(HASHER.chain(tokens, 16)[0])
    return BlockStored([key], None, tokens, 16), [key]


async def _until(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def _run(drop: set[int], buffer_steps: int) -> tuple[list[int], float]:
    pub, replay = free_port(), free_port()
    publisher = KVEventPublisher(
        PublisherConfig(True, "zmq", f"tcp://*:{pub}", f"tcp://*:{replay}", buffer_steps)
    )
    publisher._pub = Lossy(publisher._pub, drop)  # type: ignore[assignment]
    index = KVBlockIndex()
    registry = CollectorRegistry()
    endpoint = KVEventsEndpoint(
        publisher=f"tcp://127.0.0.1:{pub}", replay=f"tcp://127.0.0.1:{replay}"
    )
    config = KVEventsConfig(endpoints={WORKER: endpoint})
    subscriber = KVEventSubscriber(index, config, HASHER, KVEventMetrics(registry))
    subscriber.sync({WORKER: "decode"})
    keys: list[list[int]] = []
    try:
        await _until(lambda: index.synced(WORKER), "the stream connects")
        for n in range(5):
            event, key = _prompt(n)
            keys.append(key)
            publisher.publish([event])
            await asyncio.sleep(0.05)  # one message per engine step, in order
        await _until(lambda: subscriber.last_seqs(WORKER) == [4], "every message is applied")
        lost = registry.get_sample_value(
            "disagg_gateway_kv_event_resyncs_total", {"reason": "lost"}
        )
        matched = [index.matched_blocks(WORKER, k) for k in keys]
        subscriber.sync({})  # discovery dropped the worker: it is forgotten at once
        assert index.workers() == [] and len(index) == 0
        return matched, lost or 0.0
    finally:
        await subscriber.close()
        publisher.close()


async def test_a_dropped_message_is_fetched_from_the_replay_socket() -> None:
    matched, lost = await _run(drop={2}, buffer_steps=100)
    assert matched == [1, 1, 1, 1, 1]
    assert lost == 0


async def test_a_message_the_buffer_no_longer_holds_clears_the_worker() -> None:
    # buffer_steps=1: by the time seq 3 reveals the gap, seq 2 has left the buffer.
    matched, lost = await _run(drop={2}, buffer_steps=1)
    assert lost == 1
    # Cleared, then rebuilt from what came after: nothing stale, nothing claimed from before.
    assert matched == [0, 0, 0, 1, 1]


def _checked_stream() -> tuple[KVEventSubscriber, Any, CollectorRegistry]:
    from disagg.gateway.kvsubscriber import StreamAddress, _Stream

    registry = CollectorRegistry()
    subscriber = KVEventSubscriber(
        KVBlockIndex(), KVEventsConfig(), HASHER, KVEventMetrics(registry)
    )
    stream = _Stream(StreamAddress(WORKER, 0, "tcp://127.0.0.1:1", None))
    subscriber._set_synced(stream, True)
    return subscriber, stream, registry


def _batch(n: int, hasher: BlockHasher) -> bytes:
    from disagg.kvevents import EventBatch, encode_batch

    tokens = [n * 100 + i for i in range(16)]
    key = external(hasher.chain(tokens, 16)[0])
    return encode_batch(EventBatch(float(n), [BlockStored([key], None, tokens, 16)], 0))


OTHER_SEED = BlockHasher("sha256", "another PYTHONHASHSEED")


def test_hashing_checks_turn_to_sampling_once_proven_and_still_catch_a_mismatch() -> None:
    from disagg.gateway.kvsubscriber import SAMPLE_EVERY, VERIFY_BLOCKS

    subscriber, stream, registry = _checked_stream()
    for n in range(VERIFY_BLOCKS):
        subscriber._apply(stream, n, _batch(n, HASHER), "applied")
    assert subscriber.index.synced(WORKER)
    # proven: a differently hashed event is caught within SAMPLE_EVERY stored events
    for n in range(VERIFY_BLOCKS, VERIFY_BLOCKS + SAMPLE_EVERY):
        subscriber._apply(stream, n, _batch(n, OTHER_SEED), "applied")
    assert registry.get_sample_value("disagg_gateway_kv_hash_mismatches_total") == 1
    assert not subscriber.index.synced(WORKER)


def test_a_cleared_stream_checks_every_block_again() -> None:
    from disagg.gateway.kvsubscriber import VERIFY_BLOCKS

    subscriber, stream, registry = _checked_stream()
    for n in range(VERIFY_BLOCKS):
        subscriber._apply(stream, n, _batch(n, HASHER), "applied")
    subscriber._clear(stream, "restart")  # a new engine process: its hashing is unproven
    subscriber._apply(stream, 0, _batch(VERIFY_BLOCKS, OTHER_SEED), "applied")
    assert registry.get_sample_value("disagg_gateway_kv_hash_mismatches_total") == 1

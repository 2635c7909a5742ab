"""Follow every worker's vLLM KV-event stream into the gateway's ``KVBlockIndex``.

One asyncio task per worker and data-parallel rank holds a ZMQ SUB socket on the engine's
publisher (pyzmq; ``tcp://<pod ip>:5557`` by default) and a monitor of that socket, and applies
each ``[topic, seq, batch]`` message to the index.  The index is correct only if no message is
lost, so the sequence numbers are watched:

* **(Re)connect** -- a gateway replica starting, a worker restarting, a network blip: on every
  handshake the task asks the engine's replay socket for everything from the last sequence number
  it applied (0 at first).  If the answer starts with that same message (same payload digest),
  the engine is the one we knew: the rest is applied.  Anything else (an empty answer, another
  payload, a later first message) means a new engine process or a buffer that moved on: the
  worker's entries are cleared and the stream is rebuilt from what the buffer holds.  So a gateway
  restarted next to a running engine rebuilds the engine's whole cache (up to ``buffer_steps``
  messages back) before trusting it.
* **A gap** in live sequence numbers (a slow subscriber past the high-water mark): replay from
  the first missing one; if the buffer no longer has it, clear and go on.
* **Disconnected** (the monitor says so): the stream is marked not synced, so the scorer falls
  back to the approximate index for that worker until the next handshake has caught up.

Without a replay socket a gap or a reconnect clears the worker instead.  A worker discovery drops
is forgotten at once.  A ``BlockStored`` whose parent digest is known (always for a prompt's
first blocks) is re-hashed from its ``token_ids`` with the gateway's own hasher: a mismatch (the
engine uses another ``--prefix-caching-hash-algo`` or seed) is logged once and leaves that stream
unsynced, since the gateway's request hashes could never match its keys.  Hashing is a property
of the engine process, so every block is checked only until ``VERIFY_BLOCKS`` have matched since
the stream was (re)built -- a new engine process clears the stream and is checked afresh -- and
one stored event in ``SAMPLE_EVERY`` after that: re-hashing every block of every engine's events
cost each gateway replica as much CPU as routing its requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import zmq
import zmq.asyncio
import zmq.utils.monitor
from prometheus_client import CollectorRegistry, Counter, Gauge

from disagg.blockhash import BlockHasher, external
from disagg.gateway.config import KVEventsConfig, KVEventsEndpoint
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventDecodeError,
    decode_batch,
    parse_seq,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamAddress:
    worker: str
    rank: int
    publisher: str
    replay: str | None


def stream_addresses(worker: str, config: KVEventsConfig, role: str) -> list[StreamAddress]:
    """Where ``worker``'s engines publish: explicit per-worker addresses, else its host."""
    explicit: KVEventsEndpoint | None = config.endpoints.get(worker)
    if explicit is not None:
        return [StreamAddress(worker, 0, explicit.publisher, explicit.replay)]
    host = urlsplit(worker).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return [
        StreamAddress(
            worker,
            rank,
            f"tcp://{host}:{config.port + rank}",
            None if config.replay_port is None else f"tcp://{host}:{config.replay_port + rank}",
        )
        for rank in range(getattr(config.data_parallel_size, role, 1))
    ]


class KVEventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "disagg_gateway_kv_event_batches",
            "KV event batches by outcome: applied, replayed (applied from a replay), duplicate",
            ["outcome"],
            registry=registry,
        )
        self.resyncs = Counter(
            "disagg_gateway_kv_event_resyncs",
            "Times a worker's entries were cleared: restart, lost (gap the replay could not "
            "fill), reset (AllBlocksCleared)",
            ["reason"],
            registry=registry,
        )
        self.mismatches = Counter(
            "disagg_gateway_kv_hash_mismatches",
            "BlockStored events whose hashes the gateway computes differently",
            registry=registry,
        )
        self.index_blocks = Gauge(
            "disagg_gateway_kv_index_blocks",
            "Block keys in the KV-event index",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.synced = Gauge(
            "disagg_gateway_kv_streams_synced",
            "Worker event streams currently connected and complete",
            multiprocess_mode="livemin",
            registry=registry,
        )


VERIFY_BLOCKS = 256
"""Blocks re-hashed in full after a stream is (re)built, before checking turns to sampling."""
SAMPLE_EVERY = 32
"""After that, one stored event in this many is re-hashed."""


class _Stream:
    """One engine's event stream: the applied sequence number and the last payload's digest."""

    def __init__(self, address: StreamAddress) -> None:
        self.address = address
        self.last_seq = -1
        self.last_digest = b""
        self.mismatch = False
        self.verified = 0
        """Blocks whose hashes matched the gateway's since the stream was (re)built."""
        self.stored_events = 0
        self.task: asyncio.Task[None] | None = None


class KVEventSubscriber:
    def __init__(
        self,
        index: KVBlockIndex,
        config: KVEventsConfig,
        hasher: BlockHasher,
        metrics: KVEventMetrics,
    ) -> None:
        self.index = index
        self.config = config
        self.hasher = hasher
        self.metrics = metrics
        self.ctx = zmq.asyncio.Context()
        self._streams: dict[str, list[_Stream]] = {}
        self._digests: OrderedDict[int, bytes] = OrderedDict()  # event key -> full digest
        self._retired: set[asyncio.Task[None]] = set()  # cancelled, closing their sockets
        self._outcomes: dict[str, Any] = {}  # batch outcome -> its counter (labels() is slow)

    # -- membership ----------------------------------------------------------------------------
    def sync(self, workers: Mapping[str, str]) -> None:
        """Follow exactly these workers (url -> pool role; called by discovery, in the loop)."""
        wanted = set(workers)
        for worker in [w for w in self._streams if w not in wanted]:
            for stream in self._streams.pop(worker):
                if stream.task is not None:
                    stream.task.cancel()
                    self._retired.add(stream.task)
                    stream.task.add_done_callback(self._retired.discard)
            self.index.forget(worker)
            log.info("KV events: stopped following %s", worker)
        for worker in sorted(wanted - set(self._streams)):
            streams = [_Stream(a) for a in stream_addresses(worker, self.config, workers[worker])]
            self._streams[worker] = streams
            for stream in streams:
                self.index.set_synced(worker, False, stream.address.rank)
                stream.task = asyncio.create_task(self._follow(stream), name=f"kv-events {worker}")
        self._export()

    async def close(self) -> None:
        tasks = [s.task for streams in self._streams.values() for s in streams if s.task]
        for task in tasks:
            task.cancel()
        # Every task closes its sockets as it ends; the context can only end after them.
        await asyncio.gather(*tasks, *self._retired, return_exceptions=True)
        self._streams.clear()
        self.ctx.destroy(linger=0)

    def _export(self) -> None:
        self.metrics.index_blocks.set(len(self.index))
        synced = sum(1 for ss in self._streams.values() for s in ss if self._is_synced(s))
        self.metrics.synced.set(synced)

    def _is_synced(self, stream: _Stream) -> bool:
        return self.index.synced(stream.address.worker) and not stream.mismatch

    def _set_synced(self, stream: _Stream, synced: bool) -> None:
        a = stream.address
        self.index.set_synced(a.worker, synced and not stream.mismatch, a.rank)
        self._export()

    # -- one stream ----------------------------------------------------------------------------
    async def _follow(self, stream: _Stream) -> None:
        address = stream.address
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, self.config.topic.encode())
        sub.setsockopt(zmq.LINGER, 0)
        monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        sub.connect(address.publisher)
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                ready = dict(await poller.poll())
                if monitor in ready:
                    event = zmq.utils.monitor.parse_monitor_message(await monitor.recv_multipart())
                    if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        await self._catch_up(stream)
                    elif event["event"] == zmq.EVENT_DISCONNECTED:
                        log.info("KV events of %s: disconnected", address.worker)
                        self._set_synced(stream, False)
                if sub in ready:
                    while True:
                        try:
                            frames = await sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        await self._on_live(stream, frames)
        except asyncio.CancelledError:
            raise
        finally:
            sub.disable_monitor()
            monitor.close(linger=0)
            sub.close(linger=0)

    async def _on_live(self, stream: _Stream, frames: list[bytes]) -> None:
        if len(frames) != 3:
            log.warning(
                "KV events of %s: a message of %d frames", stream.address.worker, len(frames)
            )
            return
        try:
            seq = parse_seq(frames[1])
        except EventDecodeError as exc:
            log.warning("KV events of %s: %s", stream.address.worker, exc)
            return
        if seq <= stream.last_seq:
            self.metrics.batches.labels("duplicate").inc()  # already applied from a replay
            return
        if seq > stream.last_seq + 1 and stream.last_seq >= 0:
            await self._fill_gap(stream, stream.last_seq + 1, (seq, frames[2]))
            return
        self._apply(stream, seq, frames[2], "applied")

    async def _catch_up(self, stream: _Stream) -> None:
        """After a handshake: replay from the last applied message and check it is the same."""
        worker = stream.address.worker
        if stream.address.replay is None:
            if stream.last_seq >= 0:
                self._clear(stream, "restart")
            self._set_synced(stream, True)
            return
        start = max(stream.last_seq, 0)
        messages = await self._replay(stream, start)
        if messages is None:  # no answer: what we hold cannot be checked, so start afresh
            if stream.last_seq >= 0:
                self._clear(stream, "restart")
            self._set_synced(stream, True)
            return
        if stream.last_seq >= 0:
            same = (
                bool(messages)
                and messages[0][0] == stream.last_seq
                and hashlib.sha256(messages[0][1]).digest() == stream.last_digest
            )
            if not same:
                log.info("KV events of %s: a new engine process; rebuilding its index", worker)
                self._clear(stream, "restart")
                messages = await self._replay(stream, 0) or []
        self._apply_replayed(stream, messages)
        self._set_synced(stream, True)

    async def _fill_gap(self, stream: _Stream, first_missing: int, live: tuple[int, bytes]) -> None:
        """Replay the missing messages, then apply them and the live one in order; when the
        buffer has moved past ``first_missing``, clear the worker first (what was lost is
        unknown) and go on from the oldest message there is."""
        messages = None
        if stream.address.replay is not None:
            messages = await self._replay(stream, first_missing)
        if not messages or messages[0][0] != first_missing:
            log.warning(
                "KV events of %s: messages from %d are lost; clearing its index entries",
                stream.address.worker,
                first_missing,
            )
            self._clear(stream, "lost")
        ordered = dict(messages or [])
        ordered.setdefault(*live)
        self._apply_replayed(stream, sorted(ordered.items()))

    def _apply_replayed(self, stream: _Stream, messages: list[tuple[int, bytes]]) -> None:
        for seq, payload in messages:
            if seq > stream.last_seq:
                self._apply(stream, seq, payload, "replayed")

    async def _replay(self, stream: _Stream, start: int) -> list[tuple[int, bytes]] | None:
        """Buffered messages from ``start`` on, or None when the replay socket does not answer."""
        assert stream.address.replay is not None
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(stream.address.replay)
        out: list[tuple[int, bytes]] = []
        try:
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                if not await dealer.poll(int(self.config.replay_timeout_seconds * 1000)):
                    log.warning(
                        "KV events of %s: the replay socket did not answer", stream.address.worker
                    )
                    return None
                frames = await dealer.recv_multipart()
                if len(frames) != 4:
                    continue
                seq = parse_seq(frames[2])
                if seq == -1:
                    return out
                out.append((seq, frames[3]))
        except EventDecodeError:
            return None
        finally:
            dealer.close(linger=0)

    # -- applying events -----------------------------------------------------------------------
    def _clear(self, stream: _Stream, reason: str) -> None:
        self.index.cleared(stream.address.worker, stream.address.rank)
        stream.last_seq, stream.last_digest = -1, b""
        stream.verified = 0
        self.metrics.resyncs.labels(reason).inc()

    def _apply(self, stream: _Stream, seq: int, payload: bytes, outcome: str) -> None:
        a = stream.address
        stream.last_seq, stream.last_digest = seq, hashlib.sha256(payload).digest()
        try:
            batch = decode_batch(payload)
        except EventDecodeError as exc:
            log.warning("KV events of %s: undecodable batch %d: %s", a.worker, seq, exc)
            return
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._check_hashes(stream, event)
                self.index.stored(a.worker, [external(h) for h in event.block_hashes], a.rank)
            elif isinstance(event, BlockRemoved):
                self.index.removed(a.worker, [external(h) for h in event.block_hashes], a.rank)
            elif isinstance(event, AllBlocksCleared):
                self.index.cleared(a.worker, a.rank)
                self.metrics.resyncs.labels("reset").inc()
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self.metrics.batches.labels(outcome)
        counter.inc()
        self._export()

    def _check_hashes(self, stream: _Stream, event: BlockStored) -> None:
        """Recompute the event's hashes where the parent is known; a mismatch unsyncs it."""
        if stream.mismatch or event.block_size < 1:
            return
        stream.stored_events += 1
        if stream.verified >= VERIFY_BLOCKS and stream.stored_events % SAMPLE_EVERY:
            return
        parent: bytes | None = None
        if event.parent_block_hash is not None:
            parent = self._digests.get(external(event.parent_block_hash))
            if parent is None:
                return
        size = event.block_size
        for n, published in enumerate(event.block_hashes):
            parent = self.hasher.block(parent, event.token_ids[n * size : (n + 1) * size])
            key = external(parent)
            if key != external(published):
                stream.mismatch = True
                self.metrics.mismatches.inc()
                log.error(
                    "KV events of %s: block hashes differ from the gateway's (%s, seed %s): "
                    "check the workers' --prefix-caching-hash-algo and PYTHONHASHSEED; routing "
                    "to it falls back to the approximate index",
                    stream.address.worker,
                    self.hasher.algo,
                    "set" if self.config.hash_seed else "default",
                )
                self._set_synced(stream, False)
                return
            stream.verified += 1
            self._digests[key] = parent
            if len(self._digests) > 65536:
                self._digests.popitem(last=False)

    def last_seqs(self, worker: str) -> list[int]:
        """The last applied sequence number of each of ``worker``'s streams."""
        return [s.last_seq for s in self._streams.get(worker, [])]

    def remember(self, keys: Iterable[int], digests: Iterable[bytes]) -> None:
        """Digests the gateway computed for a prompt: lets later events be checked."""
        for key, digest in zip(keys, digests, strict=False):
            self._digests[key] = digest
        while len(self._digests) > 65536:
            self._digests.popitem(last=False)

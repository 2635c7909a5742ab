"""The simulator's KV-event publisher: ``--kv-events-config`` as vLLM 0.33 reads and serves it.

vLLM's ``ZmqEventPublisher`` binds a ZMQ PUB socket (``endpoint``; an address with ``*`` or
``::`` is bound, any other is *connected to*), and optionally a ROUTER socket
(``replay_endpoint``) that resends buffered messages from a requested sequence number on.  With
data parallelism each rank publishes on ``port + rank``.  Every engine step that changed the
prefix cache becomes one message ``[topic, seq, msgpack batch]`` (``disagg.kvevents``), sequence
numbers counting from 0 per process; the last ``buffer_steps`` messages stay replayable.

Like vLLM, the sockets live on one thread that owns them (ZMQ sockets are not thread-safe): the
engine only puts batches on a queue, so a slow subscriber never stalls a step.  The parsing is
vLLM's: unknown keys are refused, ``publisher`` defaults to ``zmq`` when events are enabled.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import zmq

from disagg.kvevents import END_SEQ, EventBatch, KVEvent, encode_batch
from disagg.sim.config import ConfigError, KVEventsConfig

log = logging.getLogger("disagg.sim.kvevents")


def offset_endpoint(endpoint: str | None, rank: int) -> str | None:
    """vLLM's per-rank endpoint: tcp port + rank (port 0 stays 0), inproc gets a ``_dp`` suffix."""
    if not endpoint or rank == 0:
        return endpoint
    if "inproc" in endpoint:
        return f"{endpoint}_dp{rank}"
    base, _, port = endpoint.rpartition(":")
    return endpoint if int(port) == 0 else f"{base}:{int(port) + rank}"


def _binds(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KVEventPublisher:
    """One rank's PUB (+ replay ROUTER) sockets, served by a thread of their own."""

    def __init__(self, config: KVEventsConfig, rank: int = 0) -> None:
        self.config = config
        self.rank = rank
        self.endpoint = offset_endpoint(config.endpoint, rank) or config.endpoint
        self.replay_endpoint = offset_endpoint(config.replay_endpoint, rank)
        self._topic = config.topic.encode("utf-8")
        self._queue: queue.Queue[EventBatch | None] = queue.Queue(maxsize=config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._replay: zmq.Socket[bytes] | None = None
        try:
            if _binds(self.endpoint):
                self._pub.bind(self.endpoint)
            else:
                self._pub.connect(self.endpoint)
            if self.replay_endpoint is not None:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.SNDHWM, 2 * (config.buffer_steps + 1))
                self._replay.bind(self.replay_endpoint)
        except zmq.ZMQError as exc:
            self._close()
            raise ConfigError(f"--kv-events-config: cannot open {self.endpoint}: {exc}") from None
        self.published = 0
        self._running = True
        self._thread = threading.Thread(target=self._serve, name=f"kv-events-{rank}", daemon=True)
        self._thread.start()

    def publish(self, events: list[KVEvent]) -> None:
        """Queue one step's events (nothing to send: no message, as in vLLM)."""
        if events and self._running:
            try:
                self._queue.put_nowait(EventBatch(time.time(), events, self.rank))
            except queue.Full:
                log.warning("KV event queue full (%d): dropping a batch", self._queue.maxsize)

    def close(self) -> None:
        if not self._running:
            return
        self._running = False
        self._queue.put(None)
        self._thread.join(timeout=2.0)
        self._close()

    def _close(self) -> None:
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)

    def _serve(self) -> None:
        seq = 0
        while True:
            if self._replay is not None and self._replay.poll(0):
                self._answer_replay()
            try:
                batch = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if batch is None:
                return
            payload = encode_batch(batch)
            try:
                self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
            except zmq.ZMQError as exc:
                log.warning("KV event publish failed: %s", exc)
                continue
            self._buffer.append((seq, payload))
            self.published = seq = seq + 1

    def _answer_replay(self) -> None:
        assert self._replay is not None
        frames = self._replay.recv_multipart()
        if len(frames) != 3:
            log.warning("invalid KV event replay request (%d frames)", len(frames))
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= first:
                self._replay.send_multipart(
                    (client, b"", self._topic, seq.to_bytes(8, "big"), payload)
                )
        self._replay.send_multipart((client, b"", b"", END_SEQ, b""))


def describe(config: KVEventsConfig | None) -> dict[str, Any] | None:
    """What ``GET /sim/state`` shows about publishing."""
    if config is None or not config.publishing:
        return None
    return {
        "endpoint": config.endpoint,
        "replay_endpoint": config.replay_endpoint,
        "topic": config.topic,
    }

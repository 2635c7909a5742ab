"""Precise prefix routing's moving parts: the model's tokenizer, vLLM's hasher, the event feed.

``PreciseRouting`` turns a validated request body into the block keys the engines will publish
for it -- the model tokenizer's ids (``disagg.modeltokenizer``; token-id prompts are used as
given), chained with the workers' ``--prefix-caching-hash-algo`` and seed (``disagg.blockhash``),
with ``cache_salt`` folded in as vLLM does -- and runs the ``KVEventSubscriber`` that fills the
router's ``KVBlockIndex``.  Without a tokenizer, text prompts get no engine keys and every scorer
falls back to the approximate index; token-id prompts still route precisely.

It is built only when the configuration has ``routing.kvEvents``; the gateway then calls
:meth:`sync` with every discovered worker of both pools.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from disagg.api.scorers import SCORERS
from disagg.blockhash import BlockHasher, external
from disagg.gateway.config import GatewayConfig, RoutingConfig
from disagg.gateway.kvsubscriber import KVEventMetrics, KVEventSubscriber
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.modeltokenizer import ModelTokenizer, TokenizerError

log = logging.getLogger(__name__)


def prompt_token_ids(body: Mapping[str, Any], tokenizer: ModelTokenizer | None) -> list[int] | None:
    """The engine's token ids for a completions or chat body, or None when not computable."""
    if "messages" in body:
        messages = body.get("messages")
        if tokenizer is None or not isinstance(messages, list):
            return None
        try:
            return tokenizer.encode_chat(messages)
        except (TokenizerError, Exception) as exc:  # a template may raise anything
            log.debug("chat template failed: %s", exc)
            return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        return list(prompt)
    if isinstance(prompt, str) and tokenizer is not None:
        return tokenizer.encode_prompt(prompt)
    return None


_EVENT_PLUGINS = frozenset(kind.plugin for kind in SCORERS.values() if kind.needs_kv_events)


def event_roles(config: GatewayConfig) -> frozenset[str]:
    """The pools routed by a scorer that reads KV events: the workers to subscribe to."""
    profiles = {"prefill": config.routing.prefill, "decode": config.routing.decode}
    return frozenset(
        role
        for role, profile in profiles.items()
        if any(plugin.type in _EVENT_PLUGINS for plugin in profile.scorers)
    )


class PreciseRouting:
    def __init__(
        self, routing: RoutingConfig, index: KVBlockIndex, metrics: KVEventMetrics
    ) -> None:
        events = routing.kv_events
        if events is None:
            raise ValueError("precise routing needs routing.kvEvents")
        self.block_size = routing.block_size
        self.hasher = BlockHasher(events.hash_algo, events.hash_seed)
        self.tokenizer = ModelTokenizer(routing.tokenizer_path) if routing.tokenizer_path else None
        self.subscriber = KVEventSubscriber(index, events, self.hasher, metrics)

    def engine_blocks(self, body: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
        """(block keys, prompt tokens) as the engines will see this request; ((), 0) if unknown."""
        ids = prompt_token_ids(body, self.tokenizer)
        if not ids:
            return (), 0
        salt = body.get("cache_salt")
        digests = self.hasher.chain(
            ids, self.block_size, cache_salt=salt if isinstance(salt, str) else None
        )
        keys = tuple(external(d) for d in digests)
        self.subscriber.remember(keys, digests)
        return keys, len(ids)

    def sync(self, workers: Mapping[str, str]) -> None:
        """Follow these workers' events (url -> pool role)."""
        self.subscriber.sync(workers)

    async def close(self) -> None:
        await self.subscriber.close()

    def describe(self) -> dict[str, Any]:
        """What ``GET /debug/kv-index`` shows: per worker, blocks, sync state and a fingerprint
        (equal on every replica that applied the same events)."""
        index = self.subscriber.index
        return {
            "blocks": len(index),
            "max_blocks": index.max_blocks,
            "evicted": index.evicted,
            "tokenizer": str(self.tokenizer.directory) if self.tokenizer else None,
            "hash_algo": self.hasher.algo,
            "workers": {
                worker: {
                    "blocks": index.blocks(worker),
                    "synced": index.synced(worker),
                    "fingerprint": index.fingerprint(worker),
                    "last_seq": self.subscriber.last_seqs(worker),
                }
                for worker in index.workers()
            },
        }

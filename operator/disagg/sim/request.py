"""One request's life inside the engine, and the events it sends to its HTTP handler.

The HTTP layer builds a :class:`Request`, submits it and then only reads ``events``; the engine
owns every other field.  Keeping the two apart this way means a client disconnect is one
``engine.abort(request)`` call and the engine never touches HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from disagg.sim import tokenizer


@dataclass(frozen=True)
class RemotePrefill:
    """Well-formed ``kv_transfer_params`` of a decode-leg request: where to pull the KV from."""

    engine_id: str
    request_id: str
    block_ids: tuple[int, ...]
    host: str
    port: int
    tp_size: int = 1


@dataclass(frozen=True)
class MalformedRemote:
    """``kv_transfer_params`` that ask for a remote prefill but that vLLM's connector cannot
    parse: real vLLM's engine dies on them (FAULTS.md), so the simulator's does too."""

    problem: str
    hangs: bool = False
    """vLLM hangs the request first (a missing ``remote_host``), then the engine dies."""


@dataclass(frozen=True)
class TokenEvent:
    text: str
    token_id: int


@dataclass(frozen=True)
class FinishEvent:
    reason: str
    """``length`` (max_tokens or context limit) or ``stop`` (the simulated end of text)."""


@dataclass(frozen=True)
class ErrorEvent:
    status: int
    message: str
    type: str = "InternalServerError"
    silent_in_stream: bool = False
    """A stream ends with no error frame: vLLM drops the empty chunk that would carry it (a
    KV-load failure under ``kv_load_failure_policy: fail``, FAULTS.md)."""


Event = TokenEvent | FinishEvent | ErrorEvent


class EventBox:
    """The events of one request, engine to handler: ``asyncio.Queue``'s four calls the
    simulator uses, for one reader, without its bookkeeping (at a batch of 64 the engine puts 64
    tokens a step, and the queue's own work was a visible share of a step's CPU time)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, event: Event) -> None:
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Event:
        return self._items.popleft()

    async def get(self) -> Event:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    length_finish: str = "length"
    """Finish reason once ``max_tokens`` are out: ``length`` when the client set max_tokens,
    ``stop`` when the simulator picked the output length (a natural end of text)."""
    max_model_len: int = 1 << 30
    hold_for_remote_decode: bool = False
    """Prefill leg: keep the blocks after finishing until a decode worker pulls them."""
    remote: RemotePrefill | MalformedRemote | None = None
    """Decode leg: pull the prompt's KV from this prefill worker instead of computing it."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Where the engine and side channel note what happened to the request's held KV
    (``kv_hold``: held, pulled, expired, replaced; ``pulled_by``); the app passes its recorder
    entry's outcome here."""
    arrival: float = field(default_factory=time.monotonic)
    events: EventBox = field(default_factory=EventBox)

    # -- engine-owned progress --------------------------------------------------------------
    state: str = "waiting"
    """waiting -> (loading ->) running -> finished | aborted | failed."""
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    computed: int = 0
    cached_tokens: int = 0
    prefill_source: str = "local"
    """``local``, ``remote`` (KV pulled) or ``fallback`` (pull failed, prefilled locally)."""
    pull_error: str = ""
    pulled_bytes: int = 0
    pulled_tokens: int = 0
    """Prompt tokens whose KV came from the prefill worker (vLLM counts them all as
    ``external_kv_transfer``)."""
    kv_taint: int = 0
    """Non-zero when this request's KV came from blocks that held another prompt (a pull of
    reused blocks, or a prefix-cache hit on such a pull): its output is wrong, as in vLLM."""
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish_reason: str = ""
    token_sim_times: list[float] = field(default_factory=list)
    """The engine's simulated clock at each sampled token (immune to wall-clock noise)."""

    @functools.cached_property
    def output_seed(self) -> int:
        """Fixed at the first sampled token; foreign KV changes it, so the text is wrong."""
        return tokenizer.output_seed(self.prompt_ids) ^ self.kv_taint

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens (``len(all_ids)`` without building the list)."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

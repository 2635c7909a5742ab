"""The continuous-batching engine: vLLM v1's scheduler loop, with sleeps instead of kernels.

Each step the scheduler (1) gives every running request its next tokens -- one for a decoding
stream, a chunk of up to ``max_num_batched_tokens`` for a prefilling one -- preempting the newest
request when the KV cache runs out, then (2) admits waiting requests in FIFO order while there is
a free sequence slot, token budget and KV space.  The step then *takes* the time the roofline
says (:mod:`disagg.sim.timing`), divided by the speed-up, and every request whose tokens are all
computed samples one token.  Because prefill chunks and decodes share a step, a long prompt on an
aggregated worker slows every running stream: the interference disaggregation removes.

P/D: a request with ``hold_for_remote_decode`` keeps its blocks after finishing, under a lease,
for :mod:`disagg.sim.sidechannel` to hand out; a request with ``remote`` params gets its blocks,
then pulls the KV asynchronously (outside the step loop, as NIXL does) and joins the batch with
only its last prompt token left to compute -- or prefills locally when the pull fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from disagg.blockhash import BlockHasher, fingerprint
from disagg.kvevents import KVEvent
from disagg.sim import tokenizer
from disagg.sim.config import FaultConfig, SimConfig
from disagg.sim.kvcache import KVCache
from disagg.sim.metrics import SimMetrics
from disagg.sim.request import ErrorEvent, FinishEvent, RemotePrefill, Request, TokenEvent
from disagg.sim.timing import StepTimer

log = logging.getLogger("disagg.sim.engine")

Puller = Callable[[RemotePrefill, Request], Awaitable[int]]
"""Pulls ``request``'s prompt KV from a prefill worker; returns bytes moved, raises on failure."""


class PullError(Exception):
    """The KV could not be pulled (unknown or expired request, bad blocks, peer unreachable)."""


class CapacityError(ValueError):
    """A request that could never fit this worker's KV cache."""


@dataclass
class HeldKV:
    """Blocks a finished prefill keeps for a decode worker to pull."""

    request: Request
    deadline: float


class Engine:
    def __init__(
        self, config: SimConfig, timer: StepTimer, metrics: SimMetrics, rank: int = 0
    ) -> None:
        self.config = config
        self.rank = rank
        """Data-parallel rank: the ``engine`` metric label."""
        base_id = config.kv_transfer.engine_id
        self.engine_id = base_id if config.data_parallel_size == 1 else f"{base_id}_dp{rank}"
        """NIXL engine id, unique per data-parallel rank."""
        self.side_channel_port = 0
        """Where this engine's side channel listens (set once it does)."""
        self.timer = timer
        self.metrics = metrics
        blocks = config.num_gpu_blocks_override or timer.num_gpu_blocks(
            config.block_size, config.gpu_memory_utilization, config.kv_cache_memory_bytes
        )
        self.kv = KVCache(
            blocks,
            config.block_size,
            BlockHasher(config.prefix_caching_hash_algo),
            record_events=config.kv_events.publishing,
            int_event_hashes=config.kv_events_int_hashes,
        )
        self.publish_events: Callable[[list[KVEvent]], None] | None = None
        """Where each step's KV events go (the rank's publisher), when events are on."""
        self.faults: FaultConfig = config.faults
        self.puller: Puller | None = None
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.loading: set[Request] = set()
        self.held: dict[str, HeldKV] = {}
        self.steps = 0
        self.sim_time_s = 0.0
        """Simulated seconds the engine has spent in steps (idle time excluded)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pulls: set[asyncio.Task[None]] = set()
        self._clock = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        for task in [self._task, *self._pulls]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- requests --------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        """Queue ``request``; raises :class:`CapacityError` if it could never be scheduled."""
        needed = self.kv.blocks_for(request.num_prompt_tokens + 1)
        if needed > self.kv.num_blocks:
            raise CapacityError(
                f"the prompt needs {needed} KV blocks but this worker has {self.kv.num_blocks}"
            )
        self.waiting.append(request)
        self._publish_load()
        self._wake.set()

    def abort(self, request: Request) -> None:
        """The client went away: drop the request and free its blocks (held ones stay held)."""
        if request.state in ("finished", "aborted", "failed"):
            return
        with contextlib.suppress(ValueError):
            self.waiting.remove(request)
        if request in self.running:
            self.running.remove(request)
        self.loading.discard(request)
        self.kv.release(request.blocks)
        request.blocks = []
        request.state = "aborted"
        self.metrics.success("abort")
        self._publish_load()
        self._wake.set()

    def set_faults(self, faults: FaultConfig) -> None:
        self.faults = faults.validate()

    # -- the side channel's view -------------------------------------------------------------
    def claim_held(self, request_id: str, block_ids: list[int]) -> Request:
        """The held prefill ``request_id`` if its lease is live and ``block_ids`` are its blocks."""
        self._expire_leases()
        held = self.held.get(request_id)
        if held is None:
            raise PullError(f"no KV held for request {request_id!r} (unknown or lease expired)")
        if list(block_ids) != held.request.blocks[: len(block_ids)] or not block_ids:
            raise PullError(f"block ids do not match those held for {request_id!r}")
        return held.request

    def release_held(self, request_id: str, why: str = "pulled") -> None:
        """Free a held prefill's blocks; ``why`` (pulled, expired, replaced) goes to its notes."""
        held = self.held.pop(request_id, None)
        if held is not None:
            held.request.notes["kv_hold"] = why
            self.kv.release(held.request.blocks)
            held.request.blocks = []
            self._publish_load()
            self._wake.set()

    # -- the loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            self._expire_leases()
            work = self._schedule()
            self._publish_load()
            if not work:
                self.flush_events()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                continue
            await self._run_step(work)
            self.steps += 1
            now = time.monotonic()
            for request, take in work:
                if request.state != "running":
                    continue  # aborted while the step ran
                request.computed += take
                if request.computed == request.num_prompt_tokens:
                    self.kv.commit(request.blocks, request.prompt_ids)
                elif (
                    request.computed > request.num_prompt_tokens
                    and request.computed % self.kv.block_size == 0
                ):  # a generated block filled up: vLLM caches those too
                    self.kv.commit(request.blocks, request.all_ids[: request.computed])
                if request.computed >= request.num_tokens:
                    self._sample(request, now)
            self.flush_events()

    async def _run_step(self, work: list[tuple[Request, int]]) -> None:
        chunks: list[tuple[int, int]] = []
        batch = context = 0
        for request, take in work:
            if take == 1:  # a one-token forward pass is a decode, whatever the token
                batch += 1
                context += request.computed + 1
            else:
                chunks.append((take, request.computed))
        seconds = self.timer.step_seconds(chunks, batch, context) * self.faults.slowdown
        await self.sleep_simulated(seconds)
        self.sim_time_s += seconds

    async def sleep_simulated(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time against a running deadline, so asyncio's
        oversleeping does not accumulate over thousands of short steps."""
        now = time.monotonic()
        self._clock = max(self._clock, now) + seconds / self.config.speedup
        if self._clock > now:
            await asyncio.sleep(self._clock - now)
        else:
            await asyncio.sleep(0)

    async def sleep_transfer(self, seconds: float) -> None:
        """Sleep a KV transfer's simulated ``seconds`` (runs beside the step loop, like NIXL)."""
        await asyncio.sleep(seconds / self.config.speedup)

    def _schedule(self) -> list[tuple[Request, int]]:
        budget = self.config.max_num_batched_tokens
        work: list[tuple[Request, int]] = []
        for request in list(self.running):
            if request.state != "running" or budget <= 0:
                continue
            take = min(request.num_tokens - request.computed, budget)
            if take <= 0:
                continue
            while not self.kv.grow(request.blocks, request.computed + take):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is request:
                    break
            if request.state == "running":
                work.append((request, take))
                budget -= take
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            got = self.kv.acquire(request.prompt_ids if request.remote else request.all_ids)
            if got is None:
                break
            self.waiting.popleft()
            request.blocks, request.cached_tokens = got
            request.computed = request.cached_tokens
            self.metrics.inc(self.metrics.prefix_cache_queries, request.num_prompt_tokens)
            self.metrics.inc(self.metrics.prefix_cache_hits, request.cached_tokens)
            if request.scheduled_at is None:
                request.scheduled_at = time.monotonic()
                self.metrics.observe(
                    self.metrics.queue_time, request.scheduled_at - request.arrival
                )
            if request.remote is not None and request.prefill_source == "local":
                self._start_pull(request)
                continue
            request.state = "running"
            self.running.append(request)
            take = min(len(request.all_ids) - request.computed, budget)
            if self.kv.grow(request.blocks, request.computed + take):
                work.append((request, take))
                budget -= take
        return work

    def _preempt(self, request: Request) -> None:
        log.info("preempting %s (KV cache full)", request.request_id)
        self.running.remove(request)
        self.kv.release(request.blocks)
        request.blocks, request.computed, request.state = [], 0, "waiting"
        self.waiting.appendleft(request)
        self.metrics.inc(self.metrics.num_preemptions)

    def _sample(self, request: Request, now: float) -> None:
        text = tokenizer.output_token_from_seed(request.output_seed, len(request.output_ids))
        token = tokenizer.token_id(text)
        request.output_ids.append(token)
        m = self.metrics
        if request.first_token_at is None:
            request.first_token_at = now
            m.observe(m.ttft, now - request.arrival)
            m.observe(m.prefill_time, now - (request.scheduled_at or request.arrival))
            m.inc(m.prompt_tokens, request.num_prompt_tokens)
            m.prompt_sources(
                request.num_prompt_tokens - request.cached_tokens - request.pulled_tokens,
                request.cached_tokens,
                request.pulled_tokens,
            )
        elif request.last_token_at is not None:
            m.observe(m.itl, now - request.last_token_at)
        request.last_token_at = now
        request.token_sim_times.append(self.sim_time_s)
        m.inc(m.generation_tokens)
        request.events.put_nowait(TokenEvent(text, token))
        if len(request.output_ids) >= request.max_tokens:
            self._finish(request, request.length_finish, now)
        elif request.num_tokens >= request.max_model_len:
            self._finish(request, "length", now)

    def _finish(self, request: Request, reason: str, now: float) -> None:
        self.running.remove(request)
        request.state, request.finish_reason = "finished", reason
        m = self.metrics
        m.observe(m.e2e, now - request.arrival)
        m.observe(m.decode_time, now - (request.first_token_at or now))
        m.success(reason)
        if request.hold_for_remote_decode:
            self.release_held(request.request_id, "replaced")  # a retried id replaces the hold
            self.kv.commit(request.blocks, request.prompt_ids)
            self.held[request.request_id] = HeldKV(request, now + self.config.kv_lease_s)
            request.notes["kv_hold"] = "held"
        else:
            self.kv.release(request.blocks)
            request.blocks = []
        request.events.put_nowait(FinishEvent(reason))

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for request_id in [r for r, h in self.held.items() if h.deadline <= now]:
            log.info("KV lease of %s expired; freeing its blocks", request_id)
            self.release_held(request_id, "expired")

    # -- remote prefill ------------------------------------------------------------------------
    def _start_pull(self, request: Request) -> None:
        request.state = "loading"
        self.loading.add(request)
        task = asyncio.get_running_loop().create_task(self._pull(request))
        self._pulls.add(task)
        task.add_done_callback(self._pulls.discard)

    async def _pull(self, request: Request) -> None:
        assert request.remote is not None and self.puller is not None
        started = time.monotonic()
        try:
            moved = await self.puller(request.remote, request)
        except PullError as exc:
            moved, request.pull_error = -1, str(exc)
        if request.state != "loading":
            return  # aborted while pulling
        self.loading.discard(request)
        m = self.metrics
        if moved < 0:
            m.inc(m.nixl_failures)
            log.warning("KV pull for %s failed: %s", request.request_id, request.pull_error)
            if self.config.kv_transfer.load_failure_policy == "fail":
                self.kv.release(request.blocks)
                request.blocks, request.state = [], "failed"
                request.events.put_nowait(ErrorEvent(500, f"KV load failed: {request.pull_error}"))
                return
            request.prefill_source = "fallback"
        else:
            request.prefill_source = "remote"
            request.pulled_bytes = moved
            request.pulled_tokens = request.num_prompt_tokens - request.cached_tokens
            request.computed = request.num_prompt_tokens - 1
            self.kv.commit(request.blocks, request.prompt_ids)
            self.flush_events()
            m.observe(m.nixl_xfer_time, time.monotonic() - started)
            m.observe(m.nixl_bytes, moved)
        request.state = "running"
        self.running.append(request)
        self._wake.set()

    def flush_events(self) -> None:
        """Publish what the prefix cache recorded since the last flush (one vLLM step's batch)."""
        events = self.kv.take_events()
        if events and self.publish_events is not None:
            self.publish_events(events)

    # -- observability -------------------------------------------------------------------------
    def _publish_load(self) -> None:
        self.metrics.set_load(
            len(self.waiting) + len(self.loading), len(self.running), self.kv.usage
        )

    def snapshot(self) -> dict[str, object]:
        """What ``GET /sim/state`` shows."""
        return {
            "waiting": len(self.waiting),
            "loading": len(self.loading),
            "running": len(self.running),
            "held": sorted(self.held),
            "kv_blocks_total": self.kv.num_blocks,
            "kv_blocks_used": self.kv.used_blocks,
            "kv_cache_usage": self.kv.usage,
            "kv_cached_blocks": len(self.kv.cached_keys()),
            "kv_cached_fingerprint": fingerprint(self.kv.cached_keys()),
            "steps": self.steps,
            "sim_time_s": self.sim_time_s,
            "faults": vars(replace(self.faults)),
        }

"""The continuous-batching engine: vLLM v1's scheduler loop, with sleeps instead of kernels.

Each step the scheduler (1) gives every running request its next tokens -- one for a decoding
stream, a chunk of up to ``max_num_batched_tokens`` for a prefilling one -- preempting the newest
request when the KV cache runs out, then (2) admits waiting requests in FIFO order while there is
a free sequence slot, token budget and KV space.  The step then *takes* the time the roofline
says (:mod:`disagg.sim.timing`), divided by the speed-up, on an absolute timeline
(:meth:`Engine._step_deadline`, :mod:`disagg.sim.clock`), and every request whose tokens are all
computed samples one token at its end: the step's bookkeeping runs inside its time, so what the
client sees is the step, not the step plus the simulator's work.  Because prefill chunks and
decodes share a step, a long prompt on an aggregated worker slows every running stream: the
interference disaggregation removes.

P/D lives in :mod:`disagg.sim.handoff`: a prefill leg's blocks are held for a pull under a
lease, a decode leg's KV is pulled beside the step loop.  An engine can *die* (``die``), as
vLLM's EngineCore does on malformed ``kv_transfer_params``: every request it holds fails, its
loop stops, ``/health`` turns 503 and the app is told (vLLM's server then exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from disagg.blockhash import BlockHasher, fingerprint
from disagg.kvevents import KVEvent
from disagg.sim import tokenizer
from disagg.sim.clock import DeadlineSleeper
from disagg.sim.config import FaultConfig, SimConfig
from disagg.sim.handoff import HeldBlocks, Puller, PullError, RemoteLoads
from disagg.sim.kvcache import KVCache
from disagg.sim.metrics import SimMetrics
from disagg.sim.request import ErrorEvent, FinishEvent, Request, TokenEvent
from disagg.sim.timing import StepTimer

__all__ = ["CapacityError", "Engine", "PullError", "Puller"]

log = logging.getLogger("disagg.sim.engine")
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
MAX_LAG_S = 0.010
"""How far (wall seconds) the simulator may fall behind its step timeline and still make the
time up; beyond it the lost time is dropped (``Engine._step_deadline``).  A token late by up to
this much is followed by a gap shorter by as much: no client gap is shorter than its step by
more than this."""


class CapacityError(ValueError):
    """A request that could never fit this worker's KV cache."""


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
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.loading: set[Request] = set()
        self.held = HeldBlocks(self)
        self.loads = RemoteLoads(self)
        self.dead: str | None = None
        """Why the engine died (None while it runs)."""
        self.on_death: Callable[[str], None] | None = None
        self.steps = 0
        self.sim_time_s = 0.0
        """Simulated seconds the engine has spent in steps (idle time excluded)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._clock = 0.0
        """Wall time the step in progress (or the last one) ends."""
        self._busy = False
        """Steps have run back to back since the engine was last idle."""
        self._sleeper = DeadlineSleeper()
        self._woken_at: float | None = None
        """When work first reached the engine since its loop last looked (``wake``)."""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-engine")
        self.loads.start()

    async def stop(self) -> None:
        await self.loads.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._sleeper.close()

    @property
    def alive(self) -> bool:
        return self.dead is None and self._task is not None and not self._task.done()

    def die(self, reason: str) -> None:
        """The EngineCore died: fail every request it holds and stop the loop (FAULTS.md)."""
        if self.dead is not None:
            return
        self.dead = reason
        log.error("EngineCore died: %s", reason)
        for request in [*self.waiting, *self.running, *self.loading]:
            self._fail(request, ErrorEvent(500, ENGINE_DEAD))
        self.waiting.clear()
        self.running.clear()
        self.loading.clear()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if self.on_death is not None:
            self.on_death(reason)

    def wake(self) -> None:
        if self._woken_at is None:
            self._woken_at = time.monotonic()
        self._publish_load()
        self._wake.set()

    # -- requests --------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        """Queue ``request``; raises :class:`CapacityError` if it could never be scheduled."""
        needed = self.kv.blocks_for(request.num_prompt_tokens + 1)
        if needed > self.kv.num_blocks:
            raise CapacityError(
                f"the prompt needs {needed} KV blocks but this worker has {self.kv.num_blocks}"
            )
        self.waiting.append(request)
        self.wake()

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
        self.wake()

    def set_faults(self, faults: FaultConfig) -> None:
        self.faults = faults.validate()

    def _fail(self, request: Request, event: ErrorEvent) -> None:
        self.kv.release(request.blocks)
        request.blocks, request.state = [], "failed"
        self.metrics.success("error")
        request.events.put_nowait(event)

    # -- the loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            woke = time.monotonic()
            if not self._busy and self._woken_at is not None:
                # Work reached the idle engine then: the handler's own work since (setting up
                # the response) runs beside the step, as in vLLM's separate API server.
                woke = min(woke, self._woken_at)
            self._woken_at = None
            self.held.expire()
            work = self._schedule()
            self._publish_load()
            if not work:
                self.flush_events()
                self._busy = False
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                continue
            deadline = self._step_deadline(self._step_seconds(work), woke)
            sampling = self._advance(work)
            await self._sleeper.until(deadline)
            self.steps += 1
            now = time.monotonic()
            sampled = 0
            for request in sampling:
                if request.state == "running":  # else aborted while the step ran
                    self._sample(request, now)
                    sampled += 1
            self.metrics.inc(self.metrics.generation_tokens, sampled)
            self.flush_events()

    def _advance(self, work: list[tuple[Request, int]]) -> list[Request]:
        """The step's effect on each request's KV (what its forward pass computes), done while
        the step's simulated time runs; returns the requests that sample a token at its end."""
        sampling = []
        for request, take in work:
            request.computed += take
            if request.computed == request.num_prompt_tokens:
                self.kv.commit(request.blocks, request.prompt_ids)
            elif (
                request.computed > request.num_prompt_tokens
                and request.computed % self.kv.block_size == 0
            ):  # a generated block filled up: vLLM caches those too
                self.kv.commit(request.blocks, request.all_ids[: request.computed])
            if request.computed >= request.num_tokens:
                sampling.append(request)
        return sampling

    def _step_seconds(self, work: list[tuple[Request, int]]) -> float:
        chunks: list[tuple[int, int]] = []
        batch = context = 0
        for request, take in work:
            if take == 1:  # a one-token forward pass is a decode, whatever the token
                batch += 1
                context += request.computed + 1
            else:
                chunks.append((take, request.computed))
        seconds = self.timer.step_seconds(chunks, batch, context) * self.faults.slowdown
        self.sim_time_s += seconds
        return seconds

    def _step_deadline(self, seconds: float, woke: float) -> float:
        """When a step of ``seconds`` (simulated) ends, on the wall clock.

        Steps run back to back on an absolute timeline, as a GPU runs them: while the engine
        is busy a step starts where the previous one ended, whatever the simulator's own work
        in between (scheduling, sampling, streaming the tokens -- the engine's CPU work, which
        the calibrated step already contains, and which a real engine does beside the GPU).
        A late wake-up is made up by the next step, as a real engine's API server delivers a
        late token and the next on time.  Only a simulator that falls more than ``MAX_LAG_S``
        behind (a saturated machine) drops the lost time, so that it never bunches more than
        that.  An idle engine starts its step when work reached it, so scheduling counts
        inside it."""
        wall = seconds / self.config.speedup
        start = woke
        if self._busy and woke - self._clock <= MAX_LAG_S:
            start = self._clock
        self._clock = start + wall
        self._busy = True
        return self._clock

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
            hit_blocks = request.cached_tokens // self.kv.block_size
            request.kv_taint = request.kv_taint or self.kv.taint_of(request.blocks[:hit_blocks])
            self.metrics.inc(self.metrics.prefix_cache_queries, request.num_prompt_tokens)
            self.metrics.inc(self.metrics.prefix_cache_hits, request.cached_tokens)
            if request.scheduled_at is None:
                request.scheduled_at = time.monotonic()
                self.metrics.observe(
                    self.metrics.queue_time, request.scheduled_at - request.arrival
                )
            if request.remote is not None and request.prefill_source == "local":
                request.state = "loading"
                self.loading.add(request)
                self.loads.load(request)
                continue
            request.state = "running"
            self.running.append(request)
            take = min(len(request.all_ids) - request.computed, budget)
            if self.kv.grow(request.blocks, request.computed + take):
                work.append((request, take))
                budget -= take
        return work

    def loaded(self, request: Request, *, remote: bool) -> None:
        """A pull ended (``remote``: KV in place, else prefill locally): join the batch."""
        self.loading.discard(request)
        if remote:
            request.prefill_source = "remote"
            request.pulled_tokens = request.num_prompt_tokens - request.cached_tokens
            request.computed = request.num_prompt_tokens - 1
            self.kv.commit(request.blocks, request.prompt_ids)
            self.flush_events()
        else:
            request.prefill_source = "fallback"
        request.state = "running"
        self.running.append(request)
        self.wake()

    def load_failed(self, request: Request) -> None:
        """``kv_load_failure_policy: fail``: the request ends in an error (HTTP 500, or a
        stream that ends with no token, no error and no ``finish_reason`` -- FAULTS.md)."""
        self.loading.discard(request)
        self._fail(request, ErrorEvent(500, "Internal server error", silent_in_stream=True))
        self.wake()

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
            self.kv.commit(request.blocks, request.prompt_ids)
            self.held.hold(request, now)
        else:
            self.kv.release(request.blocks)
            request.blocks = []
        request.events.put_nowait(FinishEvent(reason))

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
            "held": self.held.ids(),
            "held_blocks": self.held.block_count(),
            "kv_blocks_total": self.kv.num_blocks,
            "kv_blocks_used": self.kv.used_blocks,
            "kv_cache_usage": self.kv.usage,
            "kv_cached_blocks": len(self.kv.cached_keys()),
            "kv_cached_fingerprint": fingerprint(self.kv.cached_keys()),
            "steps": self.steps,
            "sim_time_s": self.sim_time_s,
            "alive": self.alive,
            "dead": self.dead,
            "faults": vars(replace(self.faults)),
        }

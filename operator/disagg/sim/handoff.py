"""The KV handoff inside one engine: blocks a prefill leg holds for a pull, and a decode leg's pull.

This module is where the simulator reproduces what real vLLM 0.26 does when a handoff goes wrong
(``shared/real-vllm/FAULTS.md``), because the gateway is tested against it:

* **P side** (:class:`HeldBlocks`): a finished prefill leg keeps its blocks under a lease
  (``kv_lease_duration``); a decode worker holding the request heartbeats, each beat extending
  the lease to 2/3 of its length from now; an expired lease frees the blocks (counted in
  ``vllm:nixl_num_kv_expired_reqs``) but leaves their content in place until they are reused.
  A read names *block ids*, not a request: whatever those blocks hold now is what D gets.
* **D side** (:class:`RemoteLoads`): malformed params kill the engine (a missing
  ``remote_host`` hangs first); fewer block ids than the prompt needs kill it too; a failed
  read (peer gone, engine id unknown, stale agent, ids out of range) is a local prefill under
  ``recompute`` and an error under ``fail``; a read of blocks that hold another prompt's KV
  *succeeds* with wrong output, and taints D's prefix cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from disagg.sim.config import SimConfig
from disagg.sim.kvcache import KVCache, content_tags
from disagg.sim.metrics import SimMetrics
from disagg.sim.request import MalformedRemote, RemotePrefill, Request
from disagg.sim.timing import StepTimer


class Engine(Protocol):
    """What the hand-off needs of its engine (``disagg.sim.engine.Engine``)."""

    config: SimConfig
    kv: KVCache
    metrics: SimMetrics
    timer: StepTimer
    waiting: deque[Request]

    def wake(self) -> None: ...
    def die(self, reason: str) -> None: ...
    def loaded(self, request: Request, *, remote: bool) -> None: ...
    def load_failed(self, request: Request) -> None: ...
    async def sleep_transfer(self, seconds: float) -> None: ...


log = logging.getLogger("disagg.sim.handoff")


class PullError(Exception):
    """The KV could not be read (peer gone, unknown engine, stale agent, invalid block ids)."""


@dataclass(frozen=True)
class ReadResult:
    """What a read of remote blocks returned."""

    contents: list[int | None]
    """The content tag of each block read (what the blocks hold *now*)."""
    bytes_per_token: int
    done: Callable[[], Awaitable[None]]
    """Tell the prefill side the transfer finished (it frees the request's blocks)."""


Puller = Callable[[RemotePrefill, list[int]], Awaitable[ReadResult]]
"""Reads ``block_ids`` from the prefill worker ``remote`` names (the side channel's client)."""
Heartbeat = Callable[[RemotePrefill, list[str]], Awaitable[None]]
"""Extends the prefill worker's leases of ``request_ids`` (best effort)."""


@dataclass
class HeldKV:
    request: Request
    deadline: float


class HeldBlocks:
    """P side: prefill legs whose blocks wait for a decode worker's read."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lease_s = engine.config.kv_lease_s
        self._held: dict[str, HeldKV] = {}

    def ids(self) -> list[str]:
        return sorted(self._held)

    def holds(self, request_id: str) -> bool:
        return request_id in self._held

    def block_count(self) -> int:
        return sum(len(h.request.blocks) for h in self._held.values())

    def hold(self, request: Request, now: float) -> None:
        self.release(request.request_id, "replaced")  # a retried id replaces the hold
        self._held[request.request_id] = HeldKV(request, now + self.lease_s)
        request.notes["kv_hold"] = "held"

    def release(self, request_id: str, why: str) -> bool:
        """Free a held prefill's blocks; ``why`` (pulled, expired, replaced) goes to its notes."""
        held = self._held.pop(request_id, None)
        if held is None:
            return False
        held.request.notes["kv_hold"] = why
        self.engine.kv.release(held.request.blocks)
        held.request.blocks = []
        self.engine.wake()
        return True

    def expire(self) -> None:
        now = time.monotonic()
        for request_id in [r for r, h in self._held.items() if h.deadline <= now]:
            log.warning("KV lease of %s expired; freeing its blocks", request_id)
            self.engine.metrics.inc(self.engine.metrics.nixl_expired)
            self.release(request_id, "expired")

    def extend(self, request_ids: list[str]) -> None:
        """A decode worker's heartbeat: each held request gets 2/3 of a lease from now."""
        deadline = time.monotonic() + self.lease_s * 2 / 3
        for request_id in request_ids:
            held = self._held.get(request_id)
            if held is not None:
                held.deadline = max(held.deadline, deadline)

    def read(self, block_ids: list[int]) -> list[int | None]:
        """What the blocks hold now (NIXL reads memory, not requests)."""
        kv = self.engine.kv
        bad = [b for b in block_ids if not kv.valid_block(b)]
        if bad:
            raise PullError(f"NIXL_ERR_INVALID_PARAM: block ids out of range: {bad[:4]}")
        return kv.contents(block_ids)

    def notified(self, request_id: str, peer: str) -> None:
        """D says its read finished: free the blocks, or report a read after the lease."""
        held = self._held.get(request_id)
        if held is not None:
            held.request.notes["pulled_by"] = peer
            self.release(request_id, "pulled")
            return
        log.error(
            "decode worker %s read the KV of %s after its lease expired (or never held): "
            "the blocks may have been reused and its output may be wrong",
            peer,
            request_id,
        )


class RemoteLoads:
    """D side: pull a decode leg's prompt KV beside the step loop, and heartbeat while waiting."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.puller: Puller | None = None
        self.heartbeat: Heartbeat | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self.heartbeat is not None:
            self._spawn(self._heartbeats())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def load(self, request: Request) -> None:
        self._spawn(self._load(request))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, request: Request) -> None:
        engine, remote = self.engine, request.remote
        if isinstance(remote, MalformedRemote):
            if remote.hangs:
                await asyncio.sleep(engine.config.handshake_timeout_s)
            engine.die(f"malformed kv_transfer_params: {remote.problem}")
            return
        assert remote is not None and self.puller is not None
        hit = request.cached_tokens // engine.kv.block_size
        needed = len(request.blocks) - hit
        if len(remote.block_ids) < needed:
            engine.die(
                f"{request.request_id}: {len(remote.block_ids)} remote block ids for a prompt "
                f"that needs {needed}"
            )
            return
        wanted = list(remote.block_ids[len(remote.block_ids) - needed :]) if needed else []
        started = time.monotonic()
        try:
            result = await self.puller(remote, wanted)
            expected = content_tags(request.prompt_ids, engine.kv.block_size)[hit:]
            moved = result.bytes_per_token * (request.num_prompt_tokens - request.cached_tokens)
            await engine.sleep_transfer(engine.timer.transfer_seconds(moved))
            await result.done()
        except PullError as exc:
            request.pull_error = str(exc)
            moved = -1
        if request.state != "loading":
            return  # aborted (or the engine died) while pulling
        metrics = engine.metrics
        if moved < 0:
            metrics.inc(metrics.nixl_failures)
            log.warning("KV load for %s failed: %s", request.request_id, request.pull_error)
            if engine.config.kv_transfer.load_failure_policy == "fail":
                engine.load_failed(request)
            else:
                engine.loaded(request, remote=False)
            return
        if result.contents != expected:  # the blocks were reused: NIXL cannot tell
            digest = hashlib.blake2b(repr(result.contents).encode(), digest_size=8).digest()
            request.kv_taint = int.from_bytes(digest, "big") | 1
            engine.kv.taint(request.blocks[hit:], request.kv_taint)
            request.notes["kv_foreign"] = True
        request.pulled_bytes = moved
        metrics.observe(metrics.nixl_xfer_time, time.monotonic() - started)
        metrics.observe(metrics.nixl_bytes, moved)
        engine.loaded(request, remote=True)

    async def _heartbeats(self) -> None:
        """Every lease/6, tell each prefill worker which of its requests we still hold."""
        assert self.heartbeat is not None
        period = max(0.05, self.engine.config.kv_lease_s / 6)
        while True:
            await asyncio.sleep(period)
            by_peer: dict[tuple[str, str, int], tuple[RemotePrefill, list[str]]] = {}
            for request in self.engine.waiting:
                remote = request.remote
                if isinstance(remote, RemotePrefill):
                    key = (remote.engine_id, remote.host, remote.port)
                    by_peer.setdefault(key, (remote, []))[1].append(remote.request_id)
            for remote, request_ids in by_peer.values():
                with contextlib.suppress(PullError):
                    await self.heartbeat(remote, request_ids)

"""Does the gateway's KV-event index predict what a real engine's prefix cache holds?

    python -m bench.gpu.kvprobe --engine vllm --out $OUT/kvprobe.json --budget 150

One engine (the tiny model, an aggregated pool of ``bench/gpu/inferencepool.yaml`` rendered
with prefix caching, ``kvEvents`` on and a fixed hash seed, as a DisaggDeployment with
``precisePrefix`` routing renders it) and a subscriber built from the gateway's own parts:
``disagg.kvevents`` decodes the engine's ZMQ frames, ``disagg.blockhash`` recomputes each
stored block's hash from its token ids (which algorithm matches is recorded), and the gateway's
``KVBlockIndex`` holds what the engine announced.

The workload is sequential so that each request's cache hits can be read off the engine's own
counter (``vllm:prefix_cache_hits_total``, tokens) as a before/after difference: token-id
prompts that share one of a few 10-block prefixes, each with a suffix of its own.  Before each
request the index predicts the hit (its longest run of the prompt's leading blocks on the
engine, capped like the engine caps it: never the prompt's last token); after it, the engine
says what it found.  Accuracy = the share of requests whose prediction equals the engine's
count exactly.  Before the next prediction the probe waits until the index has the request's
blocks (the engine publishes after the step), so a miss is the index's, not the race's.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import zmq
from bench.gpu import engines
from bench.gpu.engines import EnginePlan, port
from bench.gpu.plans import POOL
from bench.gpu.record import Budget, Phase, Results
from bench.gpu.traffic import MODEL, scrape, total

from disagg.blockhash import HASH_FUNCTIONS, BlockHasher, external
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, decode_batch

GiB = 1 << 30
BLOCK = 16
SEED = "4242"
WORKER = "engine"
HITS = "vllm:prefix_cache_hits_total"


def plan() -> EnginePlan:
    events, replay = port(5570), port(5571)
    return EnginePlan(
        "kv",
        POOL,
        "aggregated",
        model="tiny",
        port=port(8500),
        kv_cache_bytes=1 * GiB,
        eager_startup=True,
        sets=(
            "spec.engine.prefixCaching=true",
            "spec.kvEvents.enabled=true",
            f"spec.kvEvents.port={events}",
            f"spec.kvEvents.replayPort={replay}",
            f'spec.kvEvents.hashSeed="{SEED}"',
        ),
    )


class Follower:
    """The engine's event stream into a ``KVBlockIndex``, checking every stored block's hash."""

    def __init__(self, endpoint: str) -> None:
        self.index = KVBlockIndex()
        self.hashers = {
            algo: BlockHasher(algo, SEED) for algo in HASH_FUNCTIONS if "xx" not in algo
        }
        self.matching: dict[str, int] = dict.fromkeys(self.hashers, 0)
        self.checked = self.batches = self.stored = self.removed = self.cleared = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.setsockopt(zmq.RCVTIMEO, 200)
        self._socket.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frames = self._socket.recv_multipart()
            except zmq.Again:
                continue
            try:
                batch = decode_batch(frames[-1])
            except ValueError as exc:
                self.errors.append(str(exc)[:200])
                continue
            with self._lock:
                self.batches += 1
                for event in batch.events:
                    self._apply(event)

    def _apply(self, event: object) -> None:
        if isinstance(event, BlockStored):
            self.stored += len(event.block_hashes)
            self.index.stored(WORKER, [external(h) for h in event.block_hashes])
            self._check(event)
        elif isinstance(event, BlockRemoved):
            self.removed += len(event.block_hashes)
            self.index.removed(WORKER, [external(h) for h in event.block_hashes])
        elif isinstance(event, AllBlocksCleared):
            self.cleared += 1
            self.index.cleared(WORKER)

    def _check(self, event: BlockStored) -> None:
        """Recompute the event's hashes from its token ids (a first block only: a later one's
        parent is an engine hash the probe may not have seen computed)."""
        if event.parent_block_hash is not None or not event.token_ids:
            return
        self.checked += 1
        for algo, hasher in self.hashers.items():
            mine = hasher.chain(event.token_ids, event.block_size or BLOCK)
            theirs = [external(h) for h in event.block_hashes]
            if [external(h) for h in mine] == theirs:
                self.matching[algo] += 1

    def algo(self) -> str | None:
        best = max(self.matching, key=lambda a: self.matching[a])
        return best if self.matching[best] else None

    def holds(self, keys: list[int]) -> bool:
        with self._lock:
            return self.index.matched_blocks(WORKER, keys) >= len(keys)

    def predict(self, keys: list[int]) -> int:
        with self._lock:
            return self.index.matched_blocks(WORKER, keys)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._socket.close(0)


def complete(base: str, prompt: list[int]) -> int:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0.0})
    request = urllib.request.Request(
        base + "/v1/completions", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status)


def probe(results: Results, engine: str, phase: Phase, requests: int, seed: int) -> None:
    the_plan = plan()
    engines.start(the_plan, engine)
    ready = engines.wait_ready({the_plan.name: the_plan}, phase.left())
    results.put("engine_ready", ready)
    started = engines.recorded(the_plan.name)
    if started:
        results.put("rendered", {"argv": started.argv, "env": started.env})
    if "error" in ready.get(the_plan.name, {}):
        raise RuntimeError(f"engine not ready: {ready}")
    follower = Follower(f"tcp://127.0.0.1:{port(5570)}")
    rng = random.Random(seed)
    prefixes = [[rng.randrange(100, 2000) for _ in range(10 * BLOCK)] for _ in range(5)]
    rows: list[dict[str, Any]] = []
    try:
        time.sleep(0.5)  # the subscription reaches the publisher (ZMQ's slow joiner)
        for i in range(requests):
            if phase.left() < 10:
                break
            prefix = prefixes[min(int(rng.paretovariate(1.2)) - 1, len(prefixes) - 1)]
            prompt = prefix + [rng.randrange(100, 2000) for _ in range(rng.randrange(5, 40))]
            algo = follower.algo() or "sha256"
            keys = [external(h) for h in follower.hashers[algo].chain(prompt, BLOCK)]
            cap = (len(prompt) - 1) // BLOCK
            predicted = min(follower.predict(keys), cap) * BLOCK
            before = total(scrape(the_plan.url), HITS)
            status = complete(the_plan.url, prompt)
            actual = total(scrape(the_plan.url), HITS) - before
            deadline = time.monotonic() + 3.0
            while not follower.holds(keys) and time.monotonic() < deadline:
                time.sleep(0.01)
            rows.append(
                {
                    "i": i,
                    "prompt_tokens": len(prompt),
                    "predicted_hit_tokens": predicted,
                    "engine_hit_tokens": actual,
                    "status": status,
                    "indexed_after": follower.holds(keys),
                }
            )
    finally:
        follower.close()
    exact = sum(r["predicted_hit_tokens"] == r["engine_hit_tokens"] for r in rows)
    hits = [r for r in rows if r["engine_hit_tokens"] > 0]
    results.put(
        "kvprobe",
        {
            "requests": len(rows),
            "exact_predictions": exact,
            "accuracy": round(exact / len(rows), 4) if rows else None,
            "requests_with_hits": len(hits),
            "predicted_hit_tokens": sum(r["predicted_hit_tokens"] for r in rows),
            "engine_hit_tokens": sum(r["engine_hit_tokens"] for r in rows),
            "hash_algorithm_matching": follower.algo(),
            "first_blocks_checked": follower.checked,
            "first_blocks_matching": dict(follower.matching),
            "event_batches": follower.batches,
            "blocks_stored": follower.stored,
            "blocks_removed": follower.removed,
            "all_cleared": follower.cleared,
            "decode_errors": follower.errors[:5],
            "rows": rows,
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for the probe")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    results = Results(args.out)
    results.put("engine", args.engine)
    budget = Budget(args.budget, results)
    budget.run(
        "kvprobe",
        30,
        lambda phase: probe(results, args.engine, phase, args.requests, args.seed),
        args.budget,
    )
    engines.stop(plan().name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

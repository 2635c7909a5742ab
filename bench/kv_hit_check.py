"""Does the gateway's KV-event index predict an engine's prefix-cache hits?  Run it on any engine.

The gateway's own code -- ``KVEventSubscriber`` filling a ``KVBlockIndex``, ``PreciseRouting``
tokenizing with the model's tokenizer and hashing as vLLM does -- follows one engine's KV events
while this script sends it a seeded shared-prefix workload, one request at a time.  Before each
request it predicts the cached prompt tokens from the index (vLLM's rule: the longest cached
prefix of full blocks, at most ``prompt_tokens - 1``, rounded down to a block); after it, the
engine says what it actually hit (the growth of ``vllm:prefix_cache_hits_total``, exact with one
request in flight).  It prints how often the two agree, and whether the engine counted the prompt
tokens our tokenizer counted.

Against the simulator (what the docs' numbers come from)::

    python bench/kv_hit_check.py --sim

Against a real vLLM (the GPU tier), started with events on and the same tokenizer files::

    vllm serve /models/Llama-3.1-8B-Instruct --served-model-name llama --port 8000 \\
        --kv-events-config '{"enable_kv_cache_events":true,"publisher":"zmq",
                             "endpoint":"tcp://*:5557","replay_endpoint":"tcp://*:5558"}'
    python bench/kv_hit_check.py --engine http://127.0.0.1:8000 --model llama \\
        --events tcp://127.0.0.1:5557 --replay tcp://127.0.0.1:5558 \\
        --tokenizer /models/Llama-3.1-8B-Instruct [--block-size 16] [--hash-algo sha256]

Exit status 0 when at least ``--min-accuracy`` (default 0.95) of the predictions were exact.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "bench")]

import httpx  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from disagg.gateway.config import KVEventsConfig, KVEventsEndpoint, RoutingConfig  # noqa: E402
from disagg.gateway.kvsubscriber import KVEventMetrics  # noqa: E402
from disagg.gateway.precise import PreciseRouting  # noqa: E402
from disagg.gateway.routing.kv_block_index import KVBlockIndex  # noqa: E402
from loadgen import words  # noqa: E402


def predicted_hit(matched_blocks: int, prompt_tokens: int, block_size: int) -> int:
    """What vLLM will report as cached: whole blocks, never the last prompt token."""
    limit = max(0, (prompt_tokens - 1) // block_size) * block_size
    return min(matched_blocks * block_size, limit)


def workload(n: int, seed: int, model: str) -> list[dict[str, Any]]:
    """Chat requests over a few shared system prompts, some repeated whole, some new."""
    rng = random.Random(seed)
    systems = [words(rng, 150, f"sys{i}_") for i in range(4)]
    bodies = []
    for i in range(n):
        system = systems[min(int(rng.paretovariate(1.2)) - 1, len(systems) - 1)]
        user = words(rng, rng.randint(5, 60), "u") if i % 5 else "what is the policy?"
        bodies.append(
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": user},
                ],
                "max_tokens": rng.randint(1, 24),
                "temperature": 0,
            }
        )
    return bodies


def hits_total(client: httpx.Client) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("vllm:prefix_cache_hits_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def settle(precise: PreciseRouting, engine: str, quiet_s: float = 0.15) -> None:
    """Wait until the engine's event stream has been quiet for ``quiet_s`` (events of the last
    request applied), at most 5 s."""
    deadline = time.monotonic() + 5
    last = precise.subscriber.last_seqs(engine)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now = precise.subscriber.last_seqs(engine)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


async def check(args: argparse.Namespace) -> dict[str, Any]:
    events = KVEventsConfig(
        hash_algo=args.hash_algo,
        hash_seed=args.hash_seed,
        endpoints={args.engine: KVEventsEndpoint(publisher=args.events, replay=args.replay)},
    )
    routing = RoutingConfig(
        block_size=args.block_size, kv_events=events, tokenizer_path=args.tokenizer
    )
    index = KVBlockIndex(events.max_index_blocks)
    precise = PreciseRouting(routing, index, KVEventMetrics(CollectorRegistry()))
    precise.sync({args.engine: "decode"})
    exact = tokens_agree = 0
    abs_error = 0
    rows = []
    try:
        deadline = time.monotonic() + 30
        while not index.synced(args.engine):
            if time.monotonic() > deadline:
                raise SystemExit(f"no KV event stream from {args.events} within 30 s")
            await asyncio.sleep(0.05)
        with httpx.Client(base_url=args.engine, timeout=120) as client:
            client.post("/reset_prefix_cache")
            await settle(precise, args.engine)
            for body in workload(args.requests, args.seed, args.model):
                keys, ours = precise.engine_blocks(body)
                predicted = predicted_hit(
                    index.matched_blocks(args.engine, keys), ours, args.block_size
                )
                before = hits_total(client)
                answer = client.post("/v1/chat/completions", json=body)
                answer.raise_for_status()
                actual = int(hits_total(client) - before)
                theirs = answer.json()["usage"]["prompt_tokens"]
                exact += predicted == actual
                tokens_agree += ours == theirs
                abs_error += abs(predicted - actual)
                rows.append((ours, theirs, predicted, actual))
                await settle(precise, args.engine)
    finally:
        await precise.close()
    n = len(rows)
    return {
        "requests": n,
        "exact_predictions": exact,
        "accuracy": exact / n if n else 0.0,
        "mean_abs_error_tokens": abs_error / n if n else 0.0,
        "prompt_token_agreement": tokens_agree / n if n else 0.0,
        "hit_tokens_actual": sum(r[3] for r in rows),
        "hit_tokens_predicted": sum(r[2] for r in rows),
        "first_mismatches": [r for r in rows if r[2] != r[3]][:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="KV-event index vs an engine's real cache hits")
    parser.add_argument("--engine", help="the engine's OpenAI URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", default="m")
    parser.add_argument("--events", help="its publisher, e.g. tcp://127.0.0.1:5557")
    parser.add_argument(
        "--replay", default=None, help="its replay socket, e.g. tcp://127.0.0.1:5558"
    )
    parser.add_argument("--tokenizer", help="directory with the model's tokenizer.json")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--hash-algo", default="sha256")
    parser.add_argument("--hash-seed", default=None, help="the engine's PYTHONHASHSEED, if set")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--sim", action="store_true", help="start a local simulator to check")
    args = parser.parse_args()
    sim = None
    if args.sim:
        from tests.kv_procs import EventSim

        from testbed.tokenizer import write_tokenizer

        args.tokenizer = str(write_tokenizer(Path(tempfile.mkdtemp(prefix="hit-check-"))))
        sim = EventSim("--sim-speedup", "20", tokenizer=Path(args.tokenizer))
        args.engine, args.model = sim.url, "m"
        args.events, args.replay = sim.endpoints()["publisher"], sim.endpoints()["replay"]
    elif not (args.engine and args.events and args.tokenizer):
        parser.error("--engine, --events and --tokenizer are required (or --sim)")
    try:
        result = asyncio.run(check(args))
    finally:
        if sim is not None:
            sim.stop()
    print(json.dumps(result, indent=2))
    return 0 if result["accuracy"] >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())

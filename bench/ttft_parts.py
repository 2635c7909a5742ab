"""Where a request's time to first token went: the router's path, the engine's queue, prefill.

The client measures TTFT; each simulated worker records, per request, when it arrived (wall
clock), how long it waited in the engine's queue and how long until its first token
(``GET /sim/requests``: ``queue_time_s``, ``ttft_s``, ``cached_tokens``).  Joining the two
(every request of the workload has a unique user turn, so the body identifies it) splits a
client's TTFT into

* ``front``: client -> load balancer -> gateway (routing) -> the worker's HTTP server, plus the
  worker's request parsing and API-server share;
* ``queue``: waiting in the engine for a batch slot (work queued ahead on that worker);
* ``prefill``: scheduled -> first token (the uncached prompt's compute, and the step it shares
  with other requests' decodes);
* ``back``: the first token's way back through gateway and balancer to the client.

Everything shares one clock (loopback, one machine), so the parts add up to the client's TTFT.
The benchmark reports the parts at the median and averaged over the slowest 1 %: what the tail
is made of, per router.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from loadgen import Result, percentile, stream_request


@dataclass(frozen=True)
class Parts:
    ttft: float
    front: float
    queue: float
    prefill: float
    back: float
    miss_tokens: int
    """Prompt tokens the worker had to compute (not in its prefix cache)."""
    worker: int


def user_turn(body: dict[str, Any]) -> str:
    """The key that identifies a workload request: its (unique, random) user message."""
    return str(body["messages"][-1]["content"])


async def run_timed(
    url: str, plan: list[tuple[float, str, dict[str, Any]]]
) -> list[tuple[float, Result]]:
    """``loadgen.run_workload``, also keeping each request's wall-clock send time."""
    limits = httpx.Limits(max_connections=None, keepalive_expiry=4.0)
    async with httpx.AsyncClient(
        limits=limits, timeout=httpx.Timeout(120.0), trust_env=False
    ) as client:
        start = time.perf_counter()

        async def one(offset: float, kind: str, body: dict[str, Any]) -> tuple[float, Result]:
            delay = offset - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            return sent, await stream_request(client, url + "/v1/chat/completions", body, kind)

        return list(await asyncio.gather(*(one(o, k, b) for o, k, b in plan)))


def worker_records(sim_urls: list[str]) -> dict[str, tuple[int, dict[str, Any]]]:
    """user turn -> (worker index, the worker's record of it), over every worker."""
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, url in enumerate(sim_urls):
        entries = httpx.get(url + "/sim/requests", timeout=30).json()["requests"]
        for entry in entries:
            body = entry.get("body")
            if isinstance(body, dict) and body.get("messages"):
                found[user_turn(body)] = (index, entry)
    return found


def clear_records(sim_urls: list[str]) -> None:
    for url in sim_urls:
        httpx.delete(url + "/sim/requests", timeout=5).raise_for_status()


def split(
    sent: float, result: Result, body: dict[str, Any], records: dict[str, Any]
) -> Parts | None:
    """The request's TTFT in parts; None when it failed or no worker recorded it."""
    found = records.get(user_turn(body))
    if found is None or result.ttft is None:
        return None
    worker, entry = found
    outcome = entry["outcome"]
    if "ttft_s" not in outcome:
        return None
    front = entry["time"] - sent
    queue = float(outcome["queue_time_s"])
    engine = float(outcome["ttft_s"])
    return Parts(
        ttft=result.ttft,
        front=front,
        queue=queue,
        prefill=engine - queue,
        back=result.ttft - front - engine,
        miss_tokens=int(outcome.get("prompt_tokens", 0)) - int(outcome.get("cached_tokens", 0)),
        worker=worker,
    )


PART_NAMES = ("front", "queue", "prefill", "back")


def tail_profile(parts: list[Parts]) -> dict[str, float]:
    """Median of each part over all requests, and the mean of each over the slowest 1 %
    (at least 3 requests), in ms; plus the tail's share of prefix-cache misses."""
    if not parts:
        return {}
    cut = percentile([p.ttft for p in parts], 99)
    tail = [p for p in parts if p.ttft >= cut]
    tail = tail if len(tail) >= 3 else sorted(parts, key=lambda p: p.ttft)[-3:]
    profile: dict[str, float] = {"tail_n": float(len(tail))}
    for name in PART_NAMES:
        profile[f"p50_{name}"] = percentile([getattr(p, name) for p in parts], 50) * 1000
        profile[f"tail_{name}"] = sum(getattr(p, name) for p in tail) / len(tail) * 1000
    profile["tail_miss_tokens"] = sum(p.miss_tokens for p in tail) / len(tail)
    profile["p50_miss_tokens"] = percentile([float(p.miss_tokens) for p in parts], 50)
    return profile

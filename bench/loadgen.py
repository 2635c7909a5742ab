"""Client side of the gateway benchmark: timed requests, a seeded workload, percentiles.

Everything is measured where a user would measure it: TTFT from sending the request to the first
SSE event that carries generated text, ITL between consecutive such events.  The workload is a
list of (start offset, body) built from a seed, so every router sees exactly the same requests at
the same moments.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Result:
    ok: bool
    latency: float
    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    kind: str = ""
    error: str = ""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _has_text(event: bytes) -> bool:
    try:
        data = json.loads(event)
    except ValueError:
        return False
    for choice in data.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


async def stream_request(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], kind: str = ""
) -> Result:
    start = time.perf_counter()
    ttft: float | None = None
    last: float | None = None
    itls: list[float] = []
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Result(
                    False,
                    time.perf_counter() - start,
                    kind=kind,
                    error=f"HTTP {response.status_code}",
                )
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = line[6:].encode()
                if b'"error"' in payload[:12]:
                    return Result(False, time.perf_counter() - start, kind=kind, error="midstream")
                if not _has_text(payload):
                    continue
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - start
                else:
                    assert last is not None
                    itls.append(now - last)
                last = now
    except httpx.HTTPError as exc:
        return Result(False, time.perf_counter() - start, kind=kind, error=type(exc).__name__)
    return Result(ttft is not None, time.perf_counter() - start, ttft, itls, kind)


async def whole_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Result:
    start = time.perf_counter()
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        return Result(False, time.perf_counter() - start, error=type(exc).__name__)
    return Result(
        response.status_code == 200,
        time.perf_counter() - start,
        error="" if response.status_code == 200 else f"HTTP {response.status_code}",
    )


def words(rng: random.Random, n: int, tag: str) -> str:
    """About 2n simulator tokens of text unique to ``tag``."""
    return " ".join(f"{tag}{rng.randrange(10**6)}" for _ in range(n))


@dataclass(frozen=True)
class Workload:
    """Shared-prefix chat traffic (Poisson arrivals) plus periodic bursts of long prompts."""

    seconds: float = 30.0
    rate: float = 5.0
    prefixes: int = 6
    prefix_words: int = 700
    suffix_words: int = 25
    max_tokens: int = 48
    burst_every: float = 4.0
    burst_size: int = 3
    burst_words: int = 3000
    burst_max_tokens: int = 8
    seed: int = 7

    def schedule(self, model: str) -> list[tuple[float, str, dict[str, Any]]]:
        rng = random.Random(self.seed)
        systems = [words(rng, self.prefix_words, f"sys{i}_") for i in range(self.prefixes)]
        plan: list[tuple[float, str, dict[str, Any]]] = []
        t = 0.0
        while True:
            t += rng.expovariate(self.rate)
            if t >= self.seconds:
                break
            system = systems[min(int(rng.paretovariate(1.2)) - 1, self.prefixes - 1)]
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": words(rng, self.suffix_words, "u")},
            ]
            plan.append(
                (
                    t,
                    "shared",
                    {
                        "model": model,
                        "messages": messages,
                        "max_tokens": self.max_tokens,
                        "stream": True,
                    },
                )
            )
        b = self.burst_every / 2
        while b < self.seconds:
            for _ in range(self.burst_size):
                prompt = words(rng, self.burst_words, "long")
                plan.append(
                    (
                        b,
                        "long",
                        {
                            "model": model,
                            "prompt": prompt,
                            "max_tokens": self.burst_max_tokens,
                            "stream": True,
                        },
                    )
                )
            b += self.burst_every
        return sorted(plan, key=lambda item: item[0])


async def run_workload(
    url_base: str, plan: list[tuple[float, str, dict[str, Any]]]
) -> list[Result]:
    limits = httpx.Limits(max_connections=None, keepalive_expiry=4.0)
    timeout = httpx.Timeout(120.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        start = time.perf_counter()

        async def one(offset: float, kind: str, body: dict[str, Any]) -> Result:
            delay = offset - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            return await stream_request(client, url_base + path, body, kind)

        return list(await asyncio.gather(*(one(o, k, b) for o, k, b in plan)))

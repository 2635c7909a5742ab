"""Part 1 of the gateway benchmark: what a router adds, at 1, 32 and 256 concurrent streams.

One prefill and two decode sims at ``--sim-speedup 100`` (engine time near zero), unique
~400-token prompts, ``TOKENS`` streamed output tokens.  For each concurrency, ``concurrency``
clients each send one request after another for a few seconds (a closed loop) through one path:

* *direct*: this script doing the two P/D legs itself (prefill, then the decode stream) -- a
  proxy that costs nothing, the latency floor;
* *ours* and *vllm-router*: the same two legs done by the router.

Phases run path after path, concurrency after concurrency, and the whole sweep ``repeats``
times, so a slow spell of the shared machine hits every path alike; each repeat starts with
another path, so that none always runs in the wake of the same one.  Per phase: the latency of
every request (sent to last byte), the requests and streamed tokens completed, and the CPU
time the router process used (from /proc, all threads).  *Added* pXX = a router's pXX minus
the direct path's pXX in the same repeat at the same concurrency.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from tests.gateway_procs import Proc

from disagg.gateway.requests import decode_body, prefill_body
from leanclient import ClientError, LeanClient
from loadgen import percentile, words

MODEL = "m"
TOKENS = 32
"""Output tokens per request (streamed: one SSE event each)."""
CONCURRENCY = (1, 32, 256)


def body(rng: random.Random) -> dict[str, Any]:
    return {"model": MODEL, "prompt": words(rng, 200, "o"), "max_tokens": TOKENS, "stream": True}


def _descendants(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (all threads), from /proc:
    a gateway run with ``--workers N`` is a supervisor and N serving processes."""
    import os
    from pathlib import Path

    total = 0
    for proc in (pid, *_descendants(pid)):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def _stream(client: LeanClient, url: str, payload: dict[str, Any]) -> int:
    """Send one streamed request, read it to the end; the number of token events (-1: failed)."""
    status, answer = await client.post(url, json.dumps(payload).encode())
    return answer.count(b"data: {") if status == 200 else -1


async def _direct(client: LeanClient, prefill: str, decode: str, payload: dict[str, Any]) -> int:
    status, answer = await client.post(
        prefill + "/v1/completions", json.dumps(prefill_body(payload)).encode()
    )
    if status != 200:
        return -1
    params = json.loads(answer)["kv_transfer_params"]
    return await _stream(client, decode + "/v1/completions", decode_body(payload, params))


@dataclass
class Phase:
    """One path at one concurrency in one repeat."""

    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    wall: float = 0.0
    cpu: float = float("nan")


async def run_phase(
    send: Any,
    rng: random.Random,
    concurrency: int,
    seconds: float,
    pid: int | None,
) -> Phase:
    phase = Phase()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                events = await send(body(rng))
            except (ClientError, TimeoutError, KeyError, ValueError):
                events = -1
            if events < 0:
                phase.errors += 1
                continue
            phase.latencies.append(time.perf_counter() - start)
            phase.tokens += events

    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall = time.perf_counter() - t0
    if pid:
        phase.cpu = cpu_seconds(pid) - cpu0
    return phase


@dataclass
class Row:
    """One path at one concurrency: a figure per repeat (the spread) and their median."""

    name: str
    concurrency: int
    phases: list[Phase] = field(default_factory=list)
    added_p50: list[float] = field(default_factory=list)
    added_p99: list[float] = field(default_factory=list)

    def p(self, q: float) -> list[float]:
        return [percentile(ph.latencies, q) for ph in self.phases]

    def rps(self) -> list[float]:
        return [len(ph.latencies) / ph.wall for ph in self.phases if ph.wall > 0]

    def per_core(self) -> list[float]:
        return [len(ph.latencies) / ph.cpu for ph in self.phases if ph.cpu > 0]

    def cpu_per_1k_tokens(self) -> list[float]:
        """CPU seconds of the router per 1,000 streamed tokens, per repeat."""
        return [1000 * ph.cpu / ph.tokens for ph in self.phases if ph.tokens and ph.cpu == ph.cpu]

    @property
    def errors(self) -> int:
        return sum(ph.errors for ph in self.phases)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def measure(
    routers: dict[str, Proc],
    prefill: str,
    decode: str,
    repeats: int,
    seconds: float,
    concurrency: tuple[int, ...] = CONCURRENCY,
) -> list[Row]:
    rng = random.Random(11)
    rows: dict[tuple[str, int], Row] = {}
    client = LeanClient(timeout_seconds=120.0)
    try:
        senders: dict[str, tuple[Any, int | None]] = {
            "direct": (lambda b: _direct(client, prefill, decode, b), None)
        }
        for name, proc in routers.items():
            url = proc.url + "/v1/completions"
            senders[name] = (lambda b, url=url: _stream(client, url, b), proc.popen.pid)
        # warm-up: connections, caches, first-call paths
        for send, _ in senders.values():
            await run_phase(send, rng, 8, 1.0, None)
        names = list(senders)
        for rep in range(repeats):
            # Each repeat starts with another path: a phase runs in the wake of the one before
            # it (the sims' state, the machine's), and no path should always follow the same.
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for c in concurrency:
                done: dict[str, Phase] = {}
                for name in order:
                    send, pid = senders[name]
                    done[name] = await run_phase(send, rng, c, seconds, pid)
                    row = rows.setdefault((name, c), Row(name, c))
                    row.phases.append(done[name])
                base = done["direct"]
                for name, phase in done.items():
                    row = rows[(name, c)]
                    row.added_p50.append(
                        percentile(phase.latencies, 50) - percentile(base.latencies, 50)
                    )
                    row.added_p99.append(
                        percentile(phase.latencies, 99) - percentile(base.latencies, 99)
                    )
                print(
                    f"  repeat {rep + 1}, {c} streams: "
                    + ", ".join(
                        f"{n} p50 {percentile(p.latencies, 50) * 1000:.1f} ms"
                        f" {len(p.latencies) / p.wall:.0f} req/s"
                        for n, p in done.items()
                    ),
                    flush=True,
                )
    finally:
        client.close()
    return list(rows.values())

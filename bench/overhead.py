"""Part 1 of the gateway benchmark: what a router adds, at 1, 32 and 256 concurrent streams.

One prefill and two decode sims at ``--sim-speedup 100`` (engine time near zero), unique
~400-token prompts, ``TOKENS`` streamed output tokens.  For each concurrency, ``concurrency``
clients each send one request after another for a few seconds (a closed loop) through one path:

* *direct*: this script doing the two P/D legs itself (prefill, then the decode stream) -- a
  proxy that costs nothing, the latency floor;
* *ours* and *vllm-router*: the same two legs done by the router.

At 32 and 256 streams, phases run path after path, and the whole sweep ``repeats`` times, so
a slow spell of the shared machine hits every path alike; each repeat starts with another path,
so that none always runs in the wake of the same one.  At 1 stream the paths are *interleaved*
instead: one loop sends each request through the next path of a freshly shuffled order, so
every path sees the machine of the same seconds -- with a few hundred requests per phase, a
path's p99 is its few slowest requests, and in phases of their own those had come from
whatever else the machine did then (the added p99 moved by +-8 ms from repeat to repeat).
Per phase: the latency of every request (sent to last byte), the requests and streamed tokens
completed, and the CPU time the router process used (from /proc, all threads; interleaved: while
its own requests were in flight).  *Added* pXX = a router's pXX minus the direct path's
pXX in the same repeat at the same concurrency.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.gateway_procs import Proc

from disagg.gateway.requests import decode_body, prefill_body
from leanclient import ClientError, LeanClient
from loadgen import percentile, words

MODEL = "m"
TOKENS = 32
"""Output tokens per request (streamed: one SSE event each)."""
CONCURRENCY = (1, 32, 256)
BUSY = 64
"""Above this many streams a round of requests takes seconds (the sims are saturated): such
phases run longer, so that their ramp-up and drain are a small part of them."""


def body(rng: random.Random) -> dict[str, Any]:
    return {"model": MODEL, "prompt": words(rng, 200, "o"), "max_tokens": TOKENS, "stream": True}


def _descendants(pid: int) -> list[int]:
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
    return RunClock(pid).seconds()


class RunClock:
    """The CPU time a process tree has run, to the nanosecond: the sum of its threads'
    ``schedstat`` (what ``/proc/PID/stat`` reports in 10 ms ticks).  The processes are found
    once; their threads at every reading."""

    def __init__(self, pid: int) -> None:
        self.procs = [pid, *_descendants(pid)]

    def seconds(self) -> float:
        total = 0
        for proc in self.procs:
            try:
                threads = os.listdir(f"/proc/{proc}/task")
            except OSError:
                continue
            for thread in threads:
                try:
                    with open(f"/proc/{proc}/task/{thread}/schedstat", "rb") as f:
                        total += int(f.read().split(None, 1)[0])
                except (OSError, ValueError, IndexError):
                    continue  # the thread ended meanwhile
        return total / 1e9


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

    async def one(self, send: Any, rng: random.Random) -> float:
        """Send one request and note it here (latency and tokens, or an error); its
        duration."""
        start = time.perf_counter()
        try:
            events = await send(body(rng))
        except (ClientError, TimeoutError, KeyError, ValueError):
            events = -1
        took = time.perf_counter() - start
        if events < 0:
            self.errors += 1
        else:
            self.latencies.append(took)
            self.tokens += events
        return took


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
            await phase.one(send, rng)

    clock = RunClock(pid) if pid else None
    cpu0 = clock.seconds() if clock else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall = time.perf_counter() - t0
    if clock:
        phase.cpu = clock.seconds() - cpu0
    return phase


async def run_interleaved(
    paths: dict[str, tuple[Any, int | None]], rng: random.Random, seconds: float
) -> dict[str, Phase]:
    """One stream, each request through the next path of a shuffled order, for ``seconds`` per
    path.  A phase's ``wall`` and ``cpu`` are summed over its own requests: the time they took
    (its rate as if alone) and the CPU its router used meanwhile -- as in a phase of its own,
    and not the idle spells while the other paths had the stream."""
    phases = {name: Phase() for name in paths}
    clocks = {name: RunClock(pid) for name, (_, pid) in paths.items() if pid}
    for name in clocks:
        phases[name].cpu = 0.0
    order = list(paths)
    deadline = time.perf_counter() + seconds * len(order)
    while time.perf_counter() < deadline:
        rng.shuffle(order)
        for name in order:
            send, _ = paths[name]
            phase = phases[name]
            clock = clocks.get(name)
            cpu0 = clock.seconds() if clock else 0.0
            phase.wall += await phase.one(send, rng)
            if clock:
                phase.cpu += clock.seconds() - cpu0
    return phases


@dataclass
class Row:
    """One path at one concurrency: a figure per repeat (the spread) and their median."""

    name: str
    concurrency: int
    phases: list[Phase] = field(default_factory=list)
    added_p50: list[float] = field(default_factory=list)
    added_p99: list[float] = field(default_factory=list)
    pooled_added: dict[int, float] = field(default_factory=dict)
    """Added p50/p99 over every repeat's requests together (a router's pooled pXX minus the
    direct path's): at 1 stream a p99 of a thousand-odd requests, not the median of a few
    p99s of a few hundred, each its phase's three or four slowest."""
    pooled_added_p99_interval: tuple[float, float] = (float("nan"), float("nan"))
    """A 95% bootstrap interval of the pooled added p99: how far the sims' own tail lets a
    difference of two p99s be pinned down."""

    def latencies(self) -> list[float]:
        return [x for ph in self.phases for x in ph.latencies]

    def pooled(self, q: float) -> float:
        """The pXX latency of every repeat's requests together."""
        return percentile(self.latencies(), q)

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
    seconds: dict[int, float],
) -> list[Row]:
    """``seconds``: the phase length at each concurrency (in the order they run)."""
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
            for c, length in seconds.items():
                done: dict[str, Phase] = {}
                if c == 1:
                    done = await run_interleaved(senders, rng, length)
                else:
                    for name in order:
                        send, pid = senders[name]
                        done[name] = await run_phase(send, rng, c, length, pid)
                for name in order:
                    rows.setdefault((name, c), Row(name, c)).phases.append(done[name])
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
    for (name, c), path in rows.items():
        direct = rows[("direct", c)]
        if name != "direct":
            path.pooled_added = {q: path.pooled(q) - direct.pooled(q) for q in (50, 99)}
            path.pooled_added_p99_interval = bootstrap_interval(
                path.latencies(), direct.latencies(), 99
            )
    return list(rows.values())


def bootstrap_interval(
    ours: list[float], base: list[float], q: float, rounds: int = 400
) -> tuple[float, float]:
    """95% interval of ``pXX(ours) - pXX(base)``, each sample redrawn with replacement."""
    if not ours or not base:
        return float("nan"), float("nan")
    rng = random.Random(0)
    diffs = sorted(
        percentile(rng.choices(ours, k=len(ours)), q)
        - percentile(rng.choices(base, k=len(base)), q)
        for _ in range(rounds)
    )
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds) - 1]

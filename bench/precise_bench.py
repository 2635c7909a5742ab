"""Precise prefix routing benchmark: ours (KV events) vs ours (approximate) vs vllm-router.

Four simulated workers (aggregated: each prefills and decodes; Llama-3.1-8B on one H100 each,
the simulator's defaults, real speed) publish vLLM's KV events and tokenize with a real Hugging
Face tokenizer (``testbed.tokenizer``).  Three routers, each as **two replicas behind one
round-robin TCP load balancer** (``bench/tcp_lb.py``, what a Service does), replay one seeded
shared-prefix workload (``loadgen.Workload``: chat requests sharing a few dozen system prompts
with Pareto popularity, on KV caches too small to hold them all twice over):

* *precise*: our gateway, decode scorers ``precise-prefix`` + ``least-loaded`` +
  ``kv-cache-usage``, following the workers' KV events, the tokenizer mounted;
* *approximate*: our gateway's default scorers (``prefix-affinity`` + the same two);
* *vllm-router*: ``--worker-urls`` the four workers, ``--policy cache_aware``.

Setups alternate (a b c a b c ...) and every worker's prefix cache is reset between runs; the
first ``--warmup`` seconds of each run are not measured.  TTFT is what the client measured; the
hit rate is the workers' own ``vllm:prefix_cache_hits_total`` over
``vllm:prefix_cache_queries_total`` (tokens) in the measured part.  At the end of the precise runs
the two replicas' indexes are compared with each other and with the workers' caches.

    python bench/precise_bench.py [--runs 2] [--seconds 30] [--vllm-router PATH]

Writes the "Precise prefix routing" section of docs/benchmarks.md; prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "bench")]

import httpx  # noqa: E402
from tests.gateway_procs import Proc, free_port, start_gateway  # noqa: E402
from tests.kv_procs import EventSim, agrees, eventually, kv_index, precise_config  # noqa: E402

from gateway_bench import find_vllm_router, vllm_router_version  # noqa: E402
from loadgen import Result, Workload, percentile  # noqa: E402
from precise_report import PEER, PRECISE, report, write_section  # noqa: E402
from testbed.tokenizer import write_tokenizer  # noqa: E402
from ttft_parts import (  # noqa: E402
    Parts,
    clear_records,
    run_timed,
    split,
    tail_profile,
    worker_records,
)

MODEL = "m"
PRECISE_SCORERS = [{"type": "kv-cache-usage"}]
"""Beside ``precise-prefix`` (which weighs the load ahead of a prompt itself)."""


@dataclass
class Setup:
    name: str
    replicas: list[Proc]
    balancer: Proc
    runs: list[dict[str, Any]] = field(default_factory=list)


def start_balancer(ports: list[int]) -> Proc:
    port = free_port()
    argv = [sys.executable, str(ROOT / "bench" / "tcp_lb.py"), "--port", str(port)]
    argv += [str(p) for p in ports]
    return Proc(f"lb-{port}", argv, port, "/health")


def start_vllm_router(binary: str, workers: list[str]) -> Proc:
    port = free_port()
    argv = [
        binary,
        "--worker-urls",
        *workers,
        "--policy",
        "cache_aware",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--max-concurrent-requests",
        "1024",
        "--queue-size",
        "4096",
        "--request-timeout-secs",
        "600",
        "--prometheus-port",  # each replica its own (the default 29000 would clash)
        str(free_port()),
    ]
    return Proc(f"vllm-router-{port}", argv, port, "/health", timeout=60)


def prefix_counters(sims: list[EventSim]) -> tuple[float, float]:
    """Summed (hits, queries) in tokens over the workers, from their /metrics."""
    hits = queries = 0.0
    for sim in sims:
        for line in httpx.get(sim.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


async def measured_run(
    url: str, plan: list[tuple[float, str, dict[str, Any]]], warmup: float, sims: list[EventSim]
) -> tuple[list[Result], list[Parts], tuple[float, float, float, float]]:
    """Replay ``plan``; keep the requests sent after ``warmup`` seconds (and where their TTFT
    went), and the workers' hit counters from then to the end (caches start empty: the warm-up
    fills them)."""

    async def counters_after_warmup() -> tuple[float, float]:
        await asyncio.sleep(warmup)
        return await asyncio.to_thread(prefix_counters, sims)

    urls = [s.url for s in sims]
    await asyncio.to_thread(clear_records, urls)
    start_counters = asyncio.create_task(counters_after_warmup())
    timed = await run_timed(url, plan)
    h0, q0 = await start_counters
    h1, q1 = await asyncio.to_thread(prefix_counters, sims)
    records = await asyncio.to_thread(worker_records, urls)
    kept: list[Result] = []
    parts: list[Parts] = []
    for (offset, _, body), (sent, result) in zip(plan, timed, strict=True):
        if offset < warmup:
            continue
        kept.append(result)
        part = split(sent, result, body, records)
        if part is not None:
            parts.append(part)
    return kept, parts, (h0, q0, h1, q1)


def worker_requests(sims: list[EventSim]) -> list[float]:
    """Finished requests per worker (``vllm:e2e_request_latency_seconds_count``)."""
    counts = []
    for sim in sims:
        text = httpx.get(sim.url + "/metrics", timeout=5).text
        counts.append(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("vllm:e2e_request_latency_seconds_count")
            )
        )
    return counts


def reset(sims: list[EventSim]) -> None:
    for sim in sims:
        httpx.post(sim.url + "/reset_prefix_cache", timeout=5).raise_for_status()


def summarise(results: list[Result], hit_rate: float, parts: list[Parts]) -> dict[str, Any]:
    ok = [r for r in results if r.ok and r.ttft is not None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50": percentile(ttft, 50) * 1000,
        "ttft_p90": percentile(ttft, 90) * 1000,
        "ttft_p99": percentile(ttft, 99) * 1000,
        "hit_rate": hit_rate,
        "parts": tail_profile(parts),
        "load": Path("/proc/loadavg").read_text().split()[0],
    }


@dataclass
class Tally:
    """One setup's measured requests, over every run."""

    results: list[Result] = field(default_factory=list)
    parts: list[Parts] = field(default_factory=list)
    hits: float = 0.0
    queries: float = 0.0
    busiest: float = 0.0
    served: float = 0.0

    def pooled(self) -> dict[str, Any]:
        hit_rate = self.hits / self.queries if self.queries else float("nan")
        row = summarise(self.results, hit_rate, self.parts)
        row["busiest"] = self.busiest / max(1.0, self.served)
        return row


def order(setups: list[Setup], run: int) -> list[Setup]:
    """Run ``run``'s order: rotated each time, so no setup always follows the same one or goes
    first on a machine whose load drifts."""
    shift = run % len(setups)
    return setups[shift:] + setups[:shift]


def main() -> int:
    parser = argparse.ArgumentParser(description="precise vs approximate vs vllm-router")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds not measured")
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--prefixes", type=int, default=24)
    parser.add_argument("--prefix-words", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=1000, help="KV blocks per worker")
    parser.add_argument("--vllm-router", default=None)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    binary = find_vllm_router(args.vllm_router)
    if binary is None:
        print(
            "vllm-router not found: python3 -m venv /tmp/vr-venv && /tmp/vr-venv/bin/pip "
            "install vllm-router (or pass --vllm-router)",
            file=sys.stderr,
        )
        return 2
    workload = Workload(
        seconds=args.seconds,
        rate=args.rate,
        prefixes=args.prefixes,
        prefix_words=args.prefix_words,
        suffix_words=20,
        max_tokens=32,
        burst_size=0,
    )
    plan = workload.schedule(MODEL)
    started = time.time()
    load_before = Path("/proc/loadavg").read_text().split()[0]
    tokenizer = write_tokenizer(Path(tempfile.mkdtemp(prefix="bench-tokenizer-")))
    sims = [
        EventSim(
            "--num-gpu-blocks-override",
            str(args.blocks),
            "--sim-record",
            str(2 * len(plan)),
            tokenizer=tokenizer,
            wait=False,
        )
        for _ in range(4)
    ]
    procs: list[Proc] = []
    try:
        for sim in sims:
            sim.proc.wait_ready()
        urls = [s.url for s in sims]
        precise_cfg = precise_config(sims, tokenizer, PRECISE_SCORERS, weight=1.0)
        precise = [start_gateway([], urls, config=precise_cfg) for _ in range(2)]
        approximate = [start_gateway([], urls) for _ in range(2)]
        routers = [start_vllm_router(binary, urls) for _ in range(2)]
        procs += precise + approximate + routers
        setups = []
        for name, replicas in (
            (PRECISE, precise),
            ("approximate (ours)", approximate),
            (PEER, routers),
        ):
            balancer = start_balancer([p.port for p in replicas])
            procs.append(balancer)
            setups.append(Setup(name, replicas, balancer))
        tallies = {s.name: Tally() for s in setups}
        agreement: list[bool] = []
        for run in range(args.runs):
            for setup in order(setups, run):
                tally = tallies[setup.name]
                reset(sims)
                if setup.name == PRECISE:  # the reset reached both indexes
                    for replica in precise:
                        eventually(lambda r=replica: agrees(r, sims), "index == caches", 30)
                served0 = worker_requests(sims)
                out, parts, (h0, q0, h1, q1) = asyncio.run(
                    measured_run(setup.balancer.url, plan, args.warmup, sims)
                )
                served = [b - a for a, b in zip(served0, worker_requests(sims), strict=True)]
                tally.busiest += max(served)
                tally.served += sum(served)
                tally.results += out
                tally.parts += parts
                tally.hits += h1 - h0
                tally.queries += q1 - q0
                setup.runs.append(
                    summarise(out, (h1 - h0) / (q1 - q0) if q1 > q0 else float("nan"), parts)
                )
                print(f"run {run + 1} {setup.name}: {setup.runs[-1]}", flush=True)
                if setup.name == PRECISE:
                    agreement.append(replicas_agree(precise, sims))
        rows = {name: tally.pooled() for name, tally in tallies.items()}
        env = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "seconds": round(time.time() - started),
            "load": load_before,
            "python": platform.python_version(),
            "vllm_router": vllm_router_version(binary),
            "warmup": args.warmup,
            "blocks": args.blocks,
        }
        per_round = {s.name: s.runs for s in setups}
        text = report(rows, per_round, workload, len(plan), args.runs, agreement, env)
        print(text)
        if not args.no_write:
            write_section(text)
    finally:
        for proc in procs:
            proc.stop()
        for sim in sims:
            sim.stop()
    return 0


def replicas_agree(precise: list[Proc], sims: list[EventSim]) -> bool:
    """Both replicas' indexes equal every worker's cache, and each other's."""
    try:
        for replica in precise:
            eventually(lambda r=replica: agrees(r, sims), "index == caches", 30)
    except AssertionError:
        return False
    a, b = (kv_index(r)["workers"] for r in precise)
    return {w: v["fingerprint"] for w, v in a.items()} == {
        w: v["fingerprint"] for w, v in b.items()
    }


if __name__ == "__main__":
    sys.exit(main())

"""Issue 19: prefill and decode on separate H200s, against aggregated serving on the same two.

    python -m bench.gpu.two_gpu --engine vllm --out $OUT/two_gpu.json   # on nvidia-h200-x2

Four Llama-3.1-8B-shaped engines from the operator's rendering, two per GPU, started together:
``agg0``/``agg1`` (``bench/gpu/inferencepool.yaml`` with vLLM's default prefix caching), one per
GPU, and ``p`` on GPU 0 / ``d`` on GPU 1 (``bench/gpu/disaggdeployment.yaml``, NIXL).  The
same seeded workload as the gateway benchmark (``bench/loadgen.Workload``: chat turns sharing
system prompts, Poisson arrivals, plus bursts of long prompts) goes through our gateway twice: (a)
to the two aggregated engines, round robin; (b) prefill on GPU 0, decode on GPU 1.  Per setup:
TTFT p50/p99, the inter-token gaps of the chat streams while a burst is being prefilled (p50/p99)
and outside, goodput at an SLO, and for (b) the NIXL transfers D reports, their bandwidth, and
which transport UCX chose (``UCX_PROTO_INFO=y`` lines from D's log: ``cuda_ipc`` is NVLink/PCIe
peer copy, ``tcp`` the emulation a single GPU got).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from bench.fidelity import Stream, ms, pct
from bench.gpu import engines, services
from bench.gpu.engines import EnginePlan, port
from bench.gpu.plans import DEPLOYMENT, POOL, GiB
from bench.gpu.record import Budget, Phase, Results
from bench.gpu.traffic import MODEL, nixl_delta, scrape
from bench.loadgen import Workload

#: A request meets the SLO when its first token came within 1 s and no gap exceeded 100 ms.
SLO_TTFT_S, SLO_GAP_S = 1.0, 0.100
DEFAULT_CACHING = "spec.engine.prefixCaching=null"
ROUND_ROBIN = {"routing": {"decode": {"scorers": [{"type": "round-robin"}]}}}


def plans() -> list[EnginePlan]:
    eight_b = {"model": "llama-3.1-8b", "kv_cache_bytes": 40 * GiB}
    agg = {"sets": (DEFAULT_CACHING,), **eight_b}
    return [
        EnginePlan("agg0", POOL, "aggregated", port=port(9300), gpu=0, **agg),
        EnginePlan("agg1", POOL, "aggregated", port=port(9301), gpu=1, **agg),
        EnginePlan(
            "p",
            DEPLOYMENT,
            "prefill",
            port=port(9310),
            side_channel_port=port(5620),
            gpu=0,
            **eight_b,
        ),
        EnginePlan(
            "d",
            DEPLOYMENT,
            "decode",
            port=port(9311),
            side_channel_port=port(5621),
            gpu=1,
            **eight_b,
        ),
    ]


async def stream_text(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Stream:
    out = Stream()
    out.start = time.perf_counter()
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    try:
        async with http.stream("POST", url + path, json=body) as response:
            if response.status_code != 200:
                out.error = f"HTTP {response.status_code}"
                return out
            async for line in response.aiter_lines():
                compact = line.replace(" ", "")
                if not line.startswith("data: {"):
                    continue
                if '"error"' in compact[:20]:
                    out.error = line[:200]
                elif ('"content":"' in compact and '"content":""' not in compact) or (
                    '"text":"' in compact and '"text":""' not in compact
                ):
                    out.times.append(time.perf_counter())
    except httpx.HTTPError as exc:
        out.error = repr(exc)
    return out


async def replay(
    url: str, plan: list[tuple[float, str, dict[str, Any]]]
) -> list[tuple[str, Stream]]:
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(300.0), limits=limits, trust_env=False
    ) as http:
        start = time.perf_counter()

        async def one(offset: float, kind: str, body: dict[str, Any]) -> tuple[str, Stream]:
            await asyncio.sleep(max(0.0, offset - (time.perf_counter() - start)))
            return kind, await stream_text(http, url, {**body, "ignore_eos": True})

        return list(await asyncio.gather(*(one(o, k, b) for o, k, b in plan)))


def figures(runs: list[tuple[str, Stream]]) -> dict[str, Any]:
    """TTFT, gaps of the chat streams inside/outside burst prefills, goodput at the SLO."""
    bursts = [(s.start, s.start + (s.ttft or 0.0)) for kind, s in runs if kind == "long"]
    inside, outside = [], []
    for kind, s in runs:
        if kind != "shared":
            continue
        for a, b in zip(s.times, s.times[1:], strict=False):
            hit = any(b >= lo and a <= hi for lo, hi in bursts)
            (inside if hit else outside).append(b - a)
    ttfts = [s.ttft for _, s in runs if s.ttft is not None]
    good = [
        s
        for _, s in runs
        if s.ttft is not None and s.ttft <= SLO_TTFT_S and max(s.gaps() or [0.0]) <= SLO_GAP_S
    ]
    span = max((s.times[-1] for _, s in runs if s.times), default=0.0) - min(
        (s.start for _, s in runs), default=0.0
    )
    return {
        "requests": len(runs),
        "errors": sum(1 for _, s in runs if s.error or not s.times),
        "ttft_p50_ms": ms(pct(ttfts, 50)),
        "ttft_p99_ms": ms(pct(ttfts, 99)),
        "itl_during_bursts_p50_ms": ms(pct(inside, 50)),
        "itl_during_bursts_p99_ms": ms(pct(inside, 99)),
        "itl_outside_p50_ms": ms(pct(outside, 50)),
        "itl_outside_p99_ms": ms(pct(outside, 99)),
        "goodput_rps": round(len(good) / span, 3) if span > 0 else None,
        "slo": {"ttft_s": SLO_TTFT_S, "max_gap_s": SLO_GAP_S},
        "met_slo": len(good),
    }


def ucx_transport_lines(name: str) -> list[str]:
    keys = ("cuda_ipc", "cuda_copy", "tcp", "rndv", "protocol")
    lines = engines.log_tail(name, 4000).splitlines()
    return [line[:240] for line in lines if "ucp" in line.lower() and any(k in line for k in keys)][
        :40
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=["vllm", "sim"], default="vllm")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=520.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="workload length per setup")
    args = parser.parse_args(argv)
    results = Results(args.out)
    budget = Budget(args.budget, results)
    workload = Workload(seconds=args.seconds)
    schedule = workload.schedule(MODEL)
    results.put("workload", {**workload.__dict__, "requests": len(schedule)})
    engine_plans = {p.name: p for p in plans()}
    os.environ["UCX_PROTO_INFO"] = "y"  # UCX logs the transport it picks (read from D's log)

    def start(phase: Phase) -> None:
        for plan in engine_plans.values():
            engines.start(plan, args.engine)
        ready = results.put("engines", engines.wait_ready(engine_plans, phase.left()))
        if any("error" in r for r in ready.values()):
            raise RuntimeError(f"engines not ready: {ready}")

    def setup(name: str, gateway: services.Service, decode: str) -> None:
        gateway.wait_ready()
        try:
            before = scrape(engine_plans[decode].url)
            runs = asyncio.run(replay(gateway.url, schedule))
            after = scrape(engine_plans[decode].url)
        finally:
            gateway.stop()
        results.put(name, {**figures(runs), "decode_nixl": nixl_delta(before, after)})

    url = {n: p.url for n, p in engine_plans.items()}
    budget.run("start_engines", 120, start, 300)
    config = engines.ROOT / "gateway-round-robin.json"
    config.write_text(json.dumps(ROUND_ROBIN))
    aggregated = ("gw_agg", port(8010), [], [url["agg0"], url["agg1"]], "--config", str(config))
    budget.run(
        "aggregated",
        args.seconds + 30,
        lambda p: setup("aggregated", services.gateway(*aggregated), "agg0"),
    )
    budget.run(
        "disaggregated",
        args.seconds + 30,
        lambda p: setup(
            "disaggregated", services.gateway("gw_pd", port(8011), [url["p"]], [url["d"]]), "d"
        ),
    )
    results.put("ucx_transport", ucx_transport_lines("d"))
    for name in engine_plans:
        engines.stop(name)
    results.put("log_tails", {n: engines.log_tail(n, 40) for n in engine_plans})
    return 0


if __name__ == "__main__":
    sys.exit(main())

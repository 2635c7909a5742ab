"""Simulator fidelity: the same seeded workloads against real vLLM and against ``disagg sim``.

    python -m bench.fidelity --out $OUT/fidelity.json       # GPU machine: real vLLM, then sims
    python -m bench.fidelity --program sim --out f.json     # anywhere: sims on both sides
    python -m bench.fidelity --sides sim --label sim_calibrated --out f.json   # the sims only
    python -m bench.gpu.report ...                          # tables, plot, calibration fit

Everything is timed at the client (httpx, one SSE event per token), prompts are token ids (exact
lengths, nothing to tokenize) drawn from a seeded generator, unique per request (no prefix cache
can help), against engines started from the operator's rendering (``bench/gpu/plans.py``):

* ``ttft``: single requests at 512..8192 prompt tokens, on ``graphs`` (vLLM's default: CUDA
  graphs) and ``eager`` (``--enforce-eager``);
* ``itl``: p50/p90 of the gaps between tokens of B concurrent streams (B = 1..64, 128-token
  prompts, 256 output tokens; the first 4 gaps of each stream dropped), on both, after a
  warm-up burst; ``eager`` in ``--eager-rounds`` passes on the real side (pooled, each pass's
  figures kept: its CPU-bound step moves with the machine's load);
* ``itl_long``: the same with 4096-token prompts, B = 1, 8, 16, on ``graphs``;
* ``interference``: 8 running streams, then one 8192-token prompt arrives; the longest gap the
  running streams see while it prefills (the stall), with vLLM's default chunk budget
  (``graphs``) and 2048 (``chunk2048``);
* ``handoff`` (last: no target of the issue's covers it): prefill on ``p8``, decode with its
  ``kv_transfer_params`` on ``d8`` (NIXL): P's time, D's TTFT including the pull, D's TTFT
  prefilling itself, and NIXL's own transfer time.

The ``sim`` side runs simulators (``DISAGG_SIM_GPU=h200``) started from the same rendering, on the
same machine, after the real side is done; ``--program sim`` makes the real side simulators too,
the CPU proof of the whole driver.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import multiprocessing
import os
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from bench.gpu import engines
from bench.gpu.engines import EnginePlan
from bench.gpu.plans import timing_engines
from bench.gpu.record import Budget, Phase, Results
from bench.gpu.traffic import MODEL, nixl_delta, scrape

TTFT_LENGTHS = (512, 1024, 2048, 4096, 8192)
BATCHES = (1, 8, 16, 32, 64)
LONG_BATCHES = (1, 8, 16)
#: Token ids every tokenizer of the tier decodes to text (the trained part of the vocabulary).
VOCAB = (300, 8000)
SIM_PORT_OFFSET = 400
PREFILL_LEG = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


class Stream:
    """Arrival times of one streamed request's text events."""

    def __init__(self) -> None:
        self.start = 0.0
        self.times: list[float] = []
        self.error = ""

    @property
    def ttft(self) -> float | None:
        return self.times[0] - self.start if self.times else None

    def gaps(self, skip: int = 0) -> list[float]:
        return [b - a for a, b in zip(self.times[skip:], self.times[skip + 1 :], strict=False)]


async def stream(
    http: httpx.AsyncClient, base: str, ids: list[int], max_tokens: int, **extra: Any
) -> Stream:
    body = {
        "model": MODEL,
        "prompt": ids,
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        **extra,
    }
    out = Stream()
    out.start = time.perf_counter()
    try:
        async with http.stream("POST", base + "/v1/completions", json=body) as response:
            if response.status_code != 200:
                out.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return out
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"text":"' in line.replace(" ", ""):
                    if '"text":""' not in line.replace(" ", ""):
                        out.times.append(time.perf_counter())
                elif '"error"' in line[:20]:
                    out.error = line[:200]
    except httpx.HTTPError as exc:
        out.error = repr(exc)
    return out


def _stream_share(
    base: str, prompts: list[list[int]], max_tokens: int, start_at: float
) -> list[tuple[float, list[float], str]]:
    """One client process's share of the streams, started together at ``start_at``."""

    async def all_of_them() -> list[Stream]:
        limits = httpx.Limits(max_connections=None)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(300.0), limits=limits, trust_env=False
        ) as http:
            await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
            return list(
                await asyncio.gather(*(stream(http, base, ids, max_tokens) for ids in prompts))
            )

    return [(s.start, s.times, s.error) for s in asyncio.run(all_of_them())]


def streams_in_processes(base: str, prompts: list[list[int]], max_tokens: int) -> list[Stream]:
    """``prompts`` streamed at once by up to 8 client processes (``perf_counter`` is the same
    monotonic clock in every process, so their timestamps compare)."""
    workers = max(1, min(8, len(prompts)))
    shares = [prompts[i::workers] for i in range(workers)]
    start_at = time.perf_counter() + 3.0  # after the workers' start-up
    # spawn, not fork: this runs in a thread beside the parent's event loop.
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = pool.map(
            _stream_share, [base] * workers, shares, [max_tokens] * workers, [start_at] * workers
        )
        out = []
        for share in done:
            for start, times, error in share:
                s = Stream()
                s.start, s.times, s.error = start, times, error
                out.append(s)
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 3)


def itl_row(
    gaps: list[float], context_tokens: int, rounds: list[Any], errors: list[Any]
) -> dict[str, Any]:
    """One batch size's inter-token gaps, pooled over its passes, as the results record it."""
    return {
        "p50_ms": ms(pct(gaps, 50)),
        "p90_ms": ms(pct(gaps, 90)),
        "mean_ms": ms(statistics.fmean(gaps)) if gaps else None,
        "deciles_ms": [ms(pct(gaps, q)) for q in range(10, 100, 10)],
        "gaps": len(gaps),
        "context_tokens": context_tokens,
        "rounds": rounds,
        "errors": errors,
    }


class Driver:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def ids(self, n: int) -> list[int]:
        return [self.rng.randrange(*VOCAB) for _ in range(n)]

    async def ttft(self, http: httpx.AsyncClient, base: str, trials: int) -> dict[str, Any]:
        await stream(http, base, self.ids(512), 4)  # warm-up
        rows = {}
        for length in TTFT_LENGTHS:
            runs = [await stream(http, base, self.ids(length), 4) for _ in range(trials)]
            values = [r.ttft for r in runs if r.ttft is not None]
            rows[str(length)] = {
                "ttft_ms": [ms(v) for v in values],
                "p50_ms": ms(pct(values, 50)),
                "errors": [r.error for r in runs if r.error],
            }
        return rows

    async def itl(
        self,
        http: httpx.AsyncClient,
        base: str,
        batches: tuple[int, ...],
        prompt: int,
        rounds: int = 1,
    ) -> dict[str, Any]:
        """Client processes share the streams (up to 8), so that reading 64 streams of SSE
        events does not itself bunch the tokens a single Python client sees.

        A warm-up burst first (not recorded), then ``rounds`` passes over every batch size,
        each with fresh prompts: a pass is one ~6 s window per point, so one pass alone cannot
        tell an engine's step from a transient of the machine (an eager engine is bound by the
        CPU that launches its kernels).  The gaps are pooled over the passes; each pass's own
        p50/p90/mean, the machine's load average and the pooled deciles say how far apart they
        were."""
        await asyncio.gather(*(stream(http, base, self.ids(prompt), 32) for _ in range(8)))
        gaps_of: dict[int, list[float]] = {batch: [] for batch in batches}
        passes: dict[int, list[dict[str, Any]]] = {batch: [] for batch in batches}
        errors: dict[int, list[str]] = {batch: [] for batch in batches}
        for _ in range(rounds):
            for batch in batches:
                prompts = [self.ids(prompt) for _ in range(batch)]
                runs = await asyncio.to_thread(streams_in_processes, base, prompts, 256)
                gaps = [g for r in runs for g in r.gaps(skip=4)]
                gaps_of[batch] += gaps
                errors[batch] += [r.error for r in runs if r.error]
                passes[batch].append(
                    {
                        "p50_ms": ms(pct(gaps, 50)),
                        "p90_ms": ms(pct(gaps, 90)),
                        "mean_ms": ms(statistics.fmean(gaps)) if gaps else None,
                        "loadavg_1m": round(os.getloadavg()[0], 2),
                    }
                )
        rows = {}
        for batch in batches:
            gaps = gaps_of[batch]
            rows[str(batch)] = itl_row(gaps, prompt + 128, passes[batch], errors[batch])
        return rows

    async def interference(
        self, http: httpx.AsyncClient, base: str, rounds: int = 3
    ) -> dict[str, Any]:
        """The longest gap running streams see while an 8192-token prompt is prefilled."""
        out = []
        for _ in range(rounds):
            running = [
                asyncio.create_task(stream(http, base, self.ids(128), 400)) for _ in range(8)
            ]
            await asyncio.sleep(0.8)  # steady decode
            arrival = time.perf_counter()
            long = await stream(http, base, self.ids(8192), 1)
            finished = await asyncio.gather(*running)
            window_end = arrival + (long.ttft or 0.0) + 0.05
            baseline = [
                g
                for r in finished
                for t, g in zip(r.times[5:], r.gaps(5), strict=False)
                if t < arrival - 0.05
            ]
            during = [
                b - a
                for r in finished
                for a, b in zip(r.times, r.times[1:], strict=False)
                if b >= arrival and a <= window_end
            ]
            out.append(
                {
                    "stall_ms": ms(max(during) if during else None),
                    "baseline_itl_p50_ms": ms(pct(baseline, 50)),
                    "long_ttft_ms": ms(long.ttft),
                    "errors": [r.error for r in [*finished, long] if r.error],
                }
            )
        stalls = [r["stall_ms"] for r in out if r["stall_ms"] is not None]
        return {"rounds": out, "stall_p50_ms": pct(stalls, 50)}

    async def handoff(
        self, http: httpx.AsyncClient, p: str, d: str, trials: int = 3
    ) -> dict[str, Any]:
        rows = {}
        for length in (512, 2048, 8192):
            before = scrape(d)
            record: dict[str, list[Any]] = {"p_ms": [], "d_ttft_ms": [], "d_local_ttft_ms": []}
            for trial in range(trials + 1):  # the first is a warm-up (and the NIXL handshake)
                ids = self.ids(length)
                started = time.perf_counter()
                answer = await http.post(
                    p + "/v1/completions",
                    json={
                        "model": MODEL,
                        "prompt": ids,
                        "max_tokens": 1,
                        "stream": False,
                        "kv_transfer_params": PREFILL_LEG,
                    },
                )
                p_s = time.perf_counter() - started
                params = answer.json().get("kv_transfer_params")
                pulled = await stream(http, d, ids, 16, kv_transfer_params=params)
                local = await stream(http, d, self.ids(length), 16)
                if trial == 0:
                    before = scrape(d)
                    continue
                record["p_ms"].append(ms(p_s))
                record["d_ttft_ms"].append(ms(pulled.ttft))
                record["d_local_ttft_ms"].append(ms(local.ttft))
            rows[str(length)] = {**record, "nixl": nixl_delta(before, scrape(d))}
        return rows


def sim_plans() -> list[EnginePlan]:
    """The timing engines as simulators: same rendering, own names and ports."""
    return [
        replace(
            p,
            name=f"{p.name}-sim",
            port=p.port + SIM_PORT_OFFSET,
            side_channel_port=p.side_channel_port and p.side_channel_port + 100,
        )
        for p in timing_engines()
    ]


async def measure(
    side: str,
    plans: dict[str, EnginePlan],
    results: Results,
    phase: Phase,
    trials: int,
    eager_rounds: int = 1,
) -> None:
    """Every figure on ``side``'s engines, each written to the results as soon as it exists,
    the ones the report leans on most first (a figure that would start too late is skipped)."""
    driver = Driver(random.Random(20))  # the same seed on both sides: the same prompts
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(300.0), limits=limits, trust_env=False
    ) as http:
        url = {name.removesuffix("-sim"): plan.url for name, plan in plans.items()}
        steps = [
            ("ttft", "graphs", 20, lambda: driver.ttft(http, url["graphs"], trials)),
            ("itl", "graphs", 20, lambda: driver.itl(http, url["graphs"], BATCHES, 128)),
            ("interference", "graphs", 15, lambda: driver.interference(http, url["graphs"])),
            ("interference", "chunk2048", 15, lambda: driver.interference(http, url["chunk2048"])),
            ("ttft", "eager", 20, lambda: driver.ttft(http, url["eager"], trials)),
            (
                "itl",
                "eager",
                20 * eager_rounds,
                lambda: driver.itl(http, url["eager"], BATCHES, 128, eager_rounds),
            ),
            ("itl_long", "graphs", 20, lambda: driver.itl(http, url["graphs"], LONG_BATCHES, 4096)),
            ("handoff", "p8/d8", 30, lambda: driver.handoff(http, url["p8"], url["d8"])),
        ]
        for figure, target, need, work in steps:
            name = f"{side}/{figure}/{target}"
            if phase.left() < need:
                results.append(
                    "phases", {"name": name, "outcome": f"skipped: {phase.left():.0f} s left"}
                )
                continue
            started = time.perf_counter()
            try:
                value = await work()
            except Exception as exc:  # recorded; the next figure still runs
                value = {"error": f"{type(exc).__name__}: {exc}"}
            results.data.setdefault(side, {}).setdefault(figure, {})[target] = value
            results.flush()
            print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)


def run_side(
    side: str,
    program: str,
    results: Results,
    phase: Phase,
    trials: int,
    wait_s: float,
    label: str,
    eager_rounds: int = 1,
) -> None:
    """``real``: the timing engines call 2 launched (started now if they are not there);
    ``sim``: simulators from the same rendering, on their own ports.  ``program`` is what the
    engines run: ``vllm``, or ``sim`` standing in for it on a machine without a GPU."""
    plans = {p.name: p for p in (timing_engines() if side == "real" else sim_plans())}
    for name, plan in plans.items():
        running = engines.recorded(name)
        if side == "sim" or running is None or not engines.alive(running):
            engines.start(plan, program)
    ready = engines.wait_ready(plans, max(10.0, min(wait_s, phase.left() - 60)))
    started = {n: engines.recorded(n) for n in plans}
    results.put(
        f"{label}_engines",
        {
            "ready": ready,
            "program": program,
            # How the simulators time their steps (what the sim side's numbers depend on).
            "sim_timing": {
                "gpu": os.environ.get("DISAGG_SIM_GPU", "h200"),  # engines.start's default
                "calibration": os.environ.get("DISAGG_SIM_CALIBRATION"),
                "link": os.environ.get("DISAGG_SIM_LINK"),
            },
            "rendered": {
                n: {"argv": r.argv, "env": r.env, "vllmVersion": r.extra.get("vllmVersion")}
                for n, r in started.items()
                if r
            },
        },
    )
    asyncio.run(measure(label, plans, results, phase, trials, eager_rounds))
    results.put(f"{label}_log_tails", {n: engines.log_tail(n, 30) for n in plans})
    for name in plans:
        engines.stop(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sides", default="real,sim", help="real, sim or both (default)")
    parser.add_argument(
        "--program",
        choices=["vllm", "sim"],
        default="vllm",
        help="what the real side runs: vllm, or sim standing in for it (the CPU proof)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=520.0)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--wait", type=float, default=240.0, help="longest wait for engines")
    parser.add_argument("--sim-calibration", type=Path, help="calibration file for the sims")
    parser.add_argument("--label", help="results key of the sim side (default: sim)")
    parser.add_argument(
        "--eager-rounds",
        type=int,
        default=3,
        help="passes over the eager ITL batch sizes on the real side (the sims' steps are "
        "deterministic: one pass)",
    )
    parser.add_argument(
        "--real-share",
        type=float,
        default=0.55,
        help="share of the budget left the real side may take when a sim side follows "
        "(larger when the real engines start within the call)",
    )
    args = parser.parse_args(argv)
    results = Results(args.out)
    budget = Budget(args.budget, results)
    results.put(
        "plan",
        {
            "ttft_lengths": TTFT_LENGTHS,
            "batches": BATCHES,
            "long_batches": LONG_BATCHES,
            "trials": args.trials,
            "eager_rounds": args.eager_rounds,
        },
    )
    results.put("real_program", args.program)
    # The simulators stand in for engines on the lent VM, whose UCX moves KV by TCP emulation:
    # time their transfers with that measured profile, not a fabric's (disagg.planner.links).
    os.environ.setdefault("DISAGG_SIM_LINK", "ucx-tcp-emulation")
    if args.sim_calibration:  # every simulator started from here times its steps with it
        os.environ["DISAGG_SIM_CALIBRATION"] = str(args.sim_calibration.resolve())
    sides = args.sides.split(",")
    for index, side in enumerate(sides):
        program = args.program if side == "real" else "sim"
        label = args.label if side == "sim" and args.label else side
        share = args.real_share if index < len(sides) - 1 else 1.0
        rounds = args.eager_rounds if side == "real" else 1
        budget.run(
            f"fidelity_{label}",
            60,
            lambda p, s=side, g=program, k=label, r=rounds: run_side(
                s, g, results, p, args.trials, args.wait, k, r
            ),
            limit_s=budget.left() * share,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

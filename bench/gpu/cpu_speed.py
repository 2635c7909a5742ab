"""How fast the machine's vCPUs run a fixed Python loop, second by second, with nothing else on.

    python -m bench.gpu.cpu_speed --out $OUT/cpu-speed.json     # device.sh cpu-speed

An ``--enforce-eager`` engine's step is a Python loop launching kernels, and on the lent VM its
ITL moved ~2x between passes with no load, no steal time and no preemption
(``bench/gpu/eager_passes.py``).  This asks the CPUs alone: a fixed loop (:data:`ITERATIONS`
additions, ~10 ms) timed back to back, first on one CPU with the machine otherwise idle, then on
every CPU at once.  If one CPU's own speed moves over seconds by as much as the eager steps do,
the spread is the host's (a guest cannot see or pin what shares its physical cores); whether
the CPUs move together says whether it is the whole host (frequency) or each vCPU's neighbour.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ITERATIONS = 200_000


def sample(cpu: int, seconds: float) -> list[tuple[float, float]]:
    """``(monotonic time, loop ms)`` back to back for ``seconds``, pinned to ``cpu``."""
    os.sched_setaffinity(0, {cpu})
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        total = 0
        for i in range(ITERATIONS):
            total += i
        out.append((time.monotonic(), (time.perf_counter() - started) * 1e3))
    return out


def per_second(samples: list[tuple[float, float]], origin: float) -> list[float]:
    """The median loop time of each whole second since ``origin``."""
    buckets: dict[int, list[float]] = {}
    for t, value in samples:
        buckets.setdefault(int(t - origin), []).append(value)
    return [round(statistics.median(buckets[k]), 3) for k in sorted(buckets)]


def summary(series: list[float]) -> dict[str, Any]:
    ordered = sorted(series)
    return {
        "seconds": len(series),
        "min_ms": ordered[0],
        "p10_ms": ordered[len(ordered) // 10],
        "median_ms": statistics.median(ordered),
        "p90_ms": ordered[(len(ordered) * 9) // 10],
        "max_ms": ordered[-1],
        "max_over_min": round(ordered[-1] / ordered[0], 3),
    }


def correlation(a: list[float], b: list[float]) -> float | None:
    n = min(len(a), len(b))
    if n < 3 or statistics.pstdev(a[:n]) == 0 or statistics.pstdev(b[:n]) == 0:
        return None
    return round(statistics.correlation(a[:n], b[:n]), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--alone", type=float, default=60.0, help="seconds on one CPU")
    parser.add_argument("--together", type=float, default=45.0, help="seconds on every CPU")
    parser.add_argument("--cpu", type=int, help="the CPU timed alone (default: the fifth)")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    args.cpu = cpus[min(4, len(cpus) - 1)] if args.cpu is None else args.cpu
    result: dict[str, Any] = {"iterations": ITERATIONS, "cpus": cpus}
    origin = time.monotonic()
    alone = per_second(sample(args.cpu, args.alone), origin)
    result["alone"] = {"cpu": args.cpu, "per_second_median_ms": alone, **summary(alone)}
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(cpus)) as pool:
        runs = pool.starmap(sample, [(cpu, args.together) for cpu in cpus])
    start = min(s[0][0] for s in runs if s)
    series = {cpu: per_second(s, start) for cpu, s in zip(cpus, runs, strict=True)}
    pairs = [correlation(series[a], series[b]) for a in cpus for b in cpus if a < b]
    known = [p for p in pairs if p is not None]
    result["together"] = {
        "per_cpu": {
            str(cpu): {**summary(s), "per_second_median_ms": s} for cpu, s in series.items()
        },
        "mean_pairwise_correlation": round(statistics.fmean(known), 3) if known else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    spans = [v["max_over_min"] for v in result["together"]["per_cpu"].values()]
    print(
        f"alone on CPU {args.cpu}: {result['alone']['min_ms']:.1f}-{result['alone']['max_ms']:.1f}"
        f" ms per loop (per-second medians); together: max/min per CPU "
        f"{min(spans):.2f}-{max(spans):.2f}, mean pairwise correlation "
        f"{result['together']['mean_pairwise_correlation']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

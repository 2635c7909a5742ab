"""Gateway benchmark: our gateway vs going direct vs vllm-router, on the same simulators.

Two parts, one run (``python bench/gateway_bench.py``; about 13 minutes on 2 cores):

1. Overhead (``bench/overhead.py``).  One prefill and two decode sims at ``--sim-speedup 100``
   (engine time ~0), unique ~400-token prompts, 32 streamed output tokens, closed loops of 1, 32
   and 256 concurrent streams through each path: "direct" (this script doing the two P/D legs
   itself, a zero-cost proxy), our gateway, vllm-router.  Added latency = router latency -
   direct latency at the same concurrency in the same repeat; requests per CPU-second of the
   router process (/proc) = per core; CPU per 1,000 streamed tokens.  The sweep runs
   ``--overhead-repeats`` times (5: on a shared 2-core machine one phase's figures can move by
   10-15% from repeat to repeat) and every figure is shown with its spread.  At 1 stream the
   paths are interleaved request by request (``overhead.run_interleaved``) for longer
   (``--single-phase-seconds``); above 64 streams the phases run longer too
   (``--busy-phase-seconds``).
2. Routing quality.  Four sims at real speed (Llama-3.1-8B on H100, the sim's defaults), one
   seeded workload -- chat requests sharing a few long system prompts (Poisson arrivals) plus
   bursts of long unique prompts -- replayed against (a) all four sims aggregated behind our
   gateway in round-robin mode, (b) 2 prefill + 2 decode through our gateway (default config),
   (c) the same 2 + 2 through vllm-router (prefill cache_aware, decode power_of_two).  Prefix
   caches are reset between runs.  TTFT/ITL are measured by the client.

Writes docs/benchmarks.md and docs/benchmarks-gateway.png; prints the tables.
vllm-router: ``--vllm-router PATH`` or ``$VLLM_ROUTER`` or ``vllm-router`` on PATH (install it in
its own virtualenv: ``python3 -m venv /tmp/vr && /tmp/vr/bin/pip install vllm-router``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "bench")]

import httpx  # noqa: E402
from tests.gateway_procs import Proc, clear, free_port, start_gateway, start_sims  # noqa: E402

from loadgen import Result, Workload, percentile, run_workload  # noqa: E402
from overhead import BUSY, CONCURRENCY, Row, cpu_seconds, measure  # noqa: E402

MODEL = "m"


def find_vllm_router(explicit: str | None) -> str | None:
    for candidate in (
        explicit,
        os.environ.get("VLLM_ROUTER"),
        shutil.which("vllm-router"),
        "/tmp/vr-venv/bin/vllm-router",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def vllm_router_version(binary: str) -> str:
    python = Path(binary).parent / "python"
    try:
        out = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m;print(m.version('vllm-router'))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def start_vllm_router(binary: str, prefill: Sequence[str], decode: Sequence[str]) -> Proc:
    port = free_port()
    argv = [
        binary,
        "--vllm-pd-disaggregation",
        "--prefill-policy",
        "cache_aware",
        "--decode-policy",
        "power_of_two",
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
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",  # its own: the default 29000 clashes with any other router here
        str(free_port()),
    ]
    for url in prefill:
        argv += ["--prefill", url]
    for url in decode:
        argv += ["--decode", url]
    return Proc(f"vllm-router-{port}", argv, port, "/health", timeout=60)


# -- part 2: routing quality ------------------------------------------------------------------


@dataclass
class Quality:
    name: str
    results: list[Result]
    decisions: str = ""
    engine_slow_share: float = float("nan")
    """Share of the sims' own inter-token gaps (``vllm:inter_token_latency_seconds``) over
    ``SLOW_GAP``: the engines' tail, without the relay and the client."""

    engine_counts: tuple[float, float] = (0.0, 0.0)
    """(gaps <= SLOW_GAP, all gaps) the sims recorded during the run(s)."""
    router_cpu: float = 0.0
    """CPU seconds the router process used during the run(s) (of the 2 shared cores)."""
    runs: list[tuple[float, float, float]] = field(default_factory=list)
    """(TTFT p50, TTFT p99, ITL p99) of each run before pooling: the run-to-run spread."""

    def merge(self, other: Quality) -> Quality:
        """The pooled results of two runs of the same setup."""
        counts = (
            self.engine_counts[0] + other.engine_counts[0],
            self.engine_counts[1] + other.engine_counts[1],
        )
        return Quality(
            self.name,
            self.results + other.results,
            self.decisions_sum(other),
            _share(counts),
            counts,
            self.router_cpu + other.router_cpu,
            self.runs + other.runs,
        )

    def decisions_sum(self, other: Quality) -> str:
        total: dict[str, int] = {}
        for text in (self.decisions, other.decisions):
            for part in filter(None, text.split(", ")):
                key, _, value = part.rpartition(" ")
                total[key] = total.get(key, 0) + int(value)
        return ", ".join(f"{k} {v}" for k, v in total.items())

    def client_slow_share(self) -> float:
        gaps = [g for r in self.results for g in r.itls]
        return sum(1 for g in gaps if g > SLOW_GAP) / len(gaps) if gaps else float("nan")

    def ttft(self, q: float, kind: str | None = None) -> float:
        return percentile(
            [
                r.ttft
                for r in self.results
                if r.ttft is not None and (kind is None or r.kind == kind)
            ],
            q,
        )

    def itl(self, q: float) -> float:
        return percentile([g for r in self.results for g in r.itls], q)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if not r.ok)


def wait_idle(sims: Sequence[Proc], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = 0.0
        for sim in sims:
            for line in httpx.get(sim.url + "/metrics").text.splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    busy += float(line.rsplit(" ", 1)[1])
        if busy == 0:
            return
        time.sleep(0.2)


def decisions_of(gateway: Proc) -> str:
    counts = {}
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith("disagg_gateway_routing_decisions_total{"):
            counts[line.split('"')[1]] = int(float(line.rsplit(" ", 1)[1]))
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


def run_quality(
    name: str,
    start: Callable[[], Proc],
    sims: Sequence[Proc],
    plan: list[tuple[float, str, dict[str, Any]]],
) -> Quality:
    for sim in sims:
        clear(sim)
    wait_idle(sims)
    router = start()
    try:
        before = engine_itl_counts(sims)
        cpu0 = cpu_seconds(router.popen.pid)
        results = asyncio.run(run_workload(router.url, plan))
        cpu = cpu_seconds(router.popen.pid) - cpu0
        after = engine_itl_counts(sims)
        decisions = decisions_of(router) if name != "vllm-router" else ""
    finally:
        router.stop()
    counts = (after[0] - before[0], after[1] - before[1])
    run = Quality(name, results, decisions, _share(counts), counts, cpu)
    run.runs = [(run.ttft(50), run.ttft(99), run.itl(99))]
    return run


def _share(counts: tuple[float, float]) -> float:
    fast, total = counts
    return 1 - fast / total if total else float("nan")


SLOW_GAP = 0.025
"""An inter-token gap longer than this counts as slow (a bucket bound of the sims' histogram)."""


def engine_itl_counts(sims: Sequence[Proc]) -> tuple[float, float]:
    """(gaps <= SLOW_GAP, all gaps) summed over the sims' ITL histograms."""
    fast = total = 0.0
    for sim in sims:
        for line in httpx.get(sim.url + "/metrics").text.splitlines():
            if line.startswith("vllm:inter_token_latency_seconds_bucket") and (
                f'le="{SLOW_GAP}"' in line
            ):
                fast += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:inter_token_latency_seconds_count"):
                total += float(line.rsplit(" ", 1)[1])
    return fast, total


# -- report -----------------------------------------------------------------------------------


def ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1000:.1f}"


def ratio(ours: float, theirs: float) -> str:
    return "n/a" if ours != ours or theirs != theirs or theirs == 0 else f"{ours / theirs:.2f}x"


def phase_seconds(streams: int, args: argparse.Namespace) -> float:
    """How long each path's closed loop runs at ``streams`` concurrent streams."""
    if streams == 1:
        return float(args.single_phase_seconds)
    return float(args.busy_phase_seconds if streams > BUSY else args.phase_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vllm-router", help="path to the vllm-router executable")
    parser.add_argument(
        "--phase-seconds", type=float, default=4.0, help="closed loop per path and concurrency"
    )
    parser.add_argument(
        "--single-phase-seconds",
        type=float,
        default=20.0,
        help="per path at 1 stream (interleaved): a p99 of a few hundred requests is their"
        " three slowest, and the added p99 is a difference of two such tails",
    )
    parser.add_argument(
        "--busy-phase-seconds",
        type=float,
        default=10.0,
        help=f"closed loop per path above {BUSY} streams, where one round of requests takes"
        " seconds and a short phase would be mostly its ramp-up and drain",
    )
    parser.add_argument(
        "--overhead-repeats", type=int, default=5, help="sweeps of the overhead part"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="streams"
    )
    parser.add_argument("--skip-quality", action="store_true", help="only the overhead part")
    parser.add_argument(
        "--gateway-workers", type=int, default=1, help="our gateway's --workers (processes)"
    )
    parser.add_argument("--quality-seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per routing setup")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    began = time.monotonic()
    binary = find_vllm_router(args.vllm_router)
    why_no_router = "" if binary else "vllm-router not found (see --vllm-router)"
    env = {
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "python": platform.python_version(),
        "vllm_router": vllm_router_version(binary) if binary else "absent",
        "overhead_repeats": args.overhead_repeats,
        "phase_seconds": args.phase_seconds,
        "single_phase_seconds": args.single_phase_seconds,
        "busy_phase_seconds": args.busy_phase_seconds,
        "gateway_workers": args.gateway_workers,
    }
    print(f"environment: {env}", flush=True)

    # part 1
    fast = start_sims(3, "--sim-speedup", "100")
    pre, dec = fast[0].url, [s.url for s in fast[1:]]
    routers: dict[str, Proc] = {}
    try:
        # Same admission limits as vllm-router's --max-concurrent-requests 1024 below.
        uncapped = {
            "queue": {
                "prefill": {"maxInflightPerWorker": 1024},
                "decode": {"maxInflightPerWorker": 1024},
            }
        }
        routers["ours"] = start_gateway(
            [pre],
            dec,
            "--min-uncached-prompt-tokens",
            "0",
            "--log-level",
            "warning",
            *(["--workers", str(args.gateway_workers)] if args.gateway_workers > 1 else []),
            config=uncapped,
        )
        if binary:
            routers["vllm-router"] = start_vllm_router(binary, [pre], dec)
        overhead = asyncio.run(
            measure(
                routers,
                pre,
                dec[0],
                args.overhead_repeats,
                {c: phase_seconds(c, args) for c in args.concurrency},
            )
        )
    finally:
        for proc in [*routers.values(), *fast]:
            proc.stop()
    print_overhead(overhead)
    if args.skip_quality:
        return 0

    # part 2
    sims = start_sims(4)
    workload = Workload(seconds=args.quality_seconds)
    plan = workload.schedule(MODEL)
    urls = [s.url for s in sims]
    rr = {"routing": {"decode": {"scorers": [{"type": "round-robin"}]}}}
    setups: dict[str, Callable[[], Proc]] = {
        "aggregated round-robin": lambda: start_gateway(
            [], urls, "--log-level", "warning", config=rr
        ),
        "P/D ours": lambda: start_gateway(urls[:2], urls[2:], "--log-level", "warning"),
    }
    if binary:
        router_binary = binary
        setups["vllm-router"] = lambda: start_vllm_router(router_binary, urls[:2], urls[2:])
    pooled: dict[str, Quality] = {}
    try:
        # Setups alternate (a b c a b c ...): a slow spell of the shared machine hits all alike.
        for rep in range(args.repeats):
            for name, start in setups.items():
                run = run_quality(name, start, sims, plan)
                print(
                    f"  run {rep + 1} {name}: TTFT p50 {ms(run.ttft(50))} ms, "
                    f"ITL p99 {ms(run.itl(99))} ms",
                    flush=True,
                )
                pooled[name] = pooled[name].merge(run) if name in pooled else run
    finally:
        for sim in sims:
            sim.stop()
    quality = list(pooled.values())
    print_quality(quality)
    elapsed = time.monotonic() - began
    env["load_end"] = os.getloadavg()
    print(f"benchmark took {elapsed:.0f} s", flush=True)
    from report import write_report

    write_report(
        args.out, env, overhead, quality, workload, len(plan), elapsed, why_no_router, args.repeats
    )
    return 0


def print_overhead(rows: list[Row]) -> None:
    from report import goals, overhead_rows, text_table

    print(
        "\nOverhead (P/D, streamed, ~400-token prompt, 32 tokens; latencies over all repeats,"
        " other figures the median; (min-max) of the repeats)"
    )
    print(text_table(overhead_rows(rows)), flush=True)
    print(goals(rows), flush=True)


def print_quality(rows: list[Quality]) -> None:
    from report import quality_rows, text_table

    print("\nRouting quality (streaming)")
    print(text_table(quality_rows(rows)), flush=True)


if __name__ == "__main__":
    sys.exit(main())

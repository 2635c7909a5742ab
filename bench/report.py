"""Writes the gateway benchmark's results to docs/benchmarks.md and a PNG plot."""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu.sections import REAL_VLLM_BEGIN, REAL_VLLM_END
from loadgen import Workload
from overhead import TOKENS
from sections import PRECISE_BEGIN, PRECISE_END

PLOT = "benchmarks-gateway.png"


def _ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1000:.1f}"


def _ratio(ours: float, theirs: float, higher_is_better: bool = False) -> str:
    if ours != ours or theirs != theirs or theirs <= 0 or ours < 0:
        return "n/a"  # NaN, or a difference that noise pushed below zero
    return f"{ours / theirs:.2f}x" + (" (higher is better)" if higher_is_better else "")


OVERHEAD_HEADER = [
    "path",
    "streams",
    "p50 ms",
    "p99 ms",
    "added p50 ms",
    "added p99 ms",
    "req/s",
    "req/s per core",
    "CPU ms per 1k tokens",
    "errors",
]
QUALITY_HEADER = [
    "setup",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "short TTFT p50 ms",
    "ITL p50 ms",
    "ITL p99 ms",
    "gaps > 25 ms, client",
    "gaps > 25 ms, engines",
    "router CPU s",
    "errors",
    "our decisions",
]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _figures_overhead(o: Any) -> list[float]:
    """Latencies pooled over the repeats (p50, p99, added p50, added p99), then medians over
    the repeats: req/s, per core, CPU/1k tokens."""
    return [
        o.pooled(50),
        o.pooled(99),
        o.pooled_added.get(50, float("nan")),
        o.pooled_added.get(99, float("nan")),
        _median(o.rps()),
        _median(o.per_core()),
        _median(o.cpu_per_1k_tokens()),
    ]


def _spread(values: list[float], fmt: Callable[[float], str], center: float | None = None) -> str:
    """``center (min-max)`` of the repeats; the center is their median unless given."""
    if not values:
        return "-"
    middle = _median(values) if center is None else center
    if len(values) == 1:
        return fmt(middle)
    return f"{fmt(middle)} ({fmt(min(values))}-{fmt(max(values))})"


def _figures_quality(q: Any) -> list[float]:
    return [q.ttft(50), q.ttft(99), q.ttft(50, "shared"), q.itl(50), q.itl(99)]


def _shares(q: Any) -> list[float]:
    return [*_figures_quality(q), q.client_slow_share(), q.engine_slow_share, q.router_cpu]


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x * 100:.2f}%"


def _ratio_row(label: str, ours: list[float], theirs: list[float], width: int) -> list[str]:
    cells = [_ratio(a, b) for a, b in zip(ours, theirs, strict=True)]
    return [label, *cells, *([""] * (width - 1 - len(cells)))]


def overhead_rows(overhead: list[Any]) -> list[list[str]]:
    """Header; per concurrency one row per path, then ours / vllm-router (medians)."""
    rows = [OVERHEAD_HEADER]
    by = {(o.name, o.concurrency): o for o in overhead}
    for c in sorted({o.concurrency for o in overhead}):
        for o in (o for o in overhead if o.concurrency == c):
            router = o.name != "direct"
            added = [
                _spread([x * 1000 for x in each], lambda x: f"{x:.1f}", o.pooled_added[q] * 1000)
                if router
                else "-"
                for q, each in ((50, o.added_p50), (99, o.added_p99))
            ]
            rows.append(
                [
                    o.name,
                    str(c),
                    _ms(o.pooled(50)),
                    _ms(o.pooled(99)),
                    *added,
                    f"{_median(o.rps()):.0f}",
                    _spread(o.per_core(), lambda x: f"{x:.0f}") if router else "-",
                    _spread([x * 1000 for x in o.cpu_per_1k_tokens()], lambda x: f"{x:.0f}")
                    if router
                    else "-",
                    str(o.errors),
                ]
            )
        if ("ours", c) in by and ("vllm-router", c) in by:
            ours, theirs = _figures_overhead(by["ours", c]), _figures_overhead(by["vllm-router", c])
            cells = [_ratio(a, b) for a, b in zip(ours, theirs, strict=True)]
            rows.append(["ours / vllm-router", str(c), *cells, ""])
    return rows


def goals(overhead: list[Any]) -> str:
    """Issue 16's targets, met or not, from the medians."""
    by = {(o.name, o.concurrency): o for o in overhead}
    out = []
    for c in sorted({o.concurrency for o in overhead}):
        if ("ours", c) not in by or ("vllm-router", c) not in by:
            continue
        ours, theirs = by["ours", c], by["vllm-router", c]
        per_core = _median(ours.per_core()) / _median(theirs.per_core())
        paired = [a / b for a, b in zip(ours.per_core(), theirs.per_core(), strict=False)]
        each = ""
        if paired:
            above = sum(r >= 1.0 for r in paired)
            each = (
                f" (each repeat: {min(paired):.2f}-{max(paired):.2f}x,"
                f" >= 1.0x in {above} of {len(paired)})"
            )
        out.append(f"req/s per core at {c} streams {per_core:.2f}x{each}")
        a99, b99 = ours.pooled_added[99], theirs.pooled_added[99]
        if c == 1:
            low, high = (x * 1000 for x in ours.pooled_added_p99_interval)
            out.append(
                f"added p99 at 1 stream {a99 * 1000:.1f} ms (goal < 2 ms; 95% bootstrap"
                f" interval {low:.1f} to {high:.1f} ms)"
            )
        if c == max(o.concurrency for o in overhead):
            verdict = "met" if a99 <= b99 else "not met"
            out.append(
                f"added p99 at {c} streams {a99 * 1000:.1f} vs {b99 * 1000:.1f} ms ({verdict})"
            )
    return "Goals (issue 16: per core >= 1.0x vllm-router's): " + "; ".join(out)


def quality_rows(quality: list[Any]) -> list[list[str]]:
    rows = [QUALITY_HEADER]
    for q in quality:
        rows.append(
            [
                q.name,
                *(_ms(x) for x in _figures_quality(q)),
                _pct(q.client_slow_share()),
                _pct(q.engine_slow_share),
                f"{q.router_cpu:.1f}",
                str(q.errors),
                q.decisions or "-",
            ]
        )
    by = {q.name: q for q in quality}
    if "P/D ours" in by and "vllm-router" in by:
        rows.append(
            _ratio_row(
                "ours / vllm-router",
                _shares(by["P/D ours"]),
                _shares(by["vllm-router"]),
                len(QUALITY_HEADER),
            )
        )
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def markdown_table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


def _plot(path: Path, overhead: list[Any], quality: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(
        1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [1, 1, 1.6]}
    )
    routers = sorted({o.name for o in overhead if o.name != "direct"})
    levels = sorted({o.concurrency for o in overhead})
    by = {(o.name, o.concurrency): o for o in overhead}
    width = 0.8 / max(1, len(routers))
    for i, name in enumerate(routers):
        xs = [x + (i - (len(routers) - 1) / 2) * width for x in range(len(levels))]
        left.bar(xs, [by[name, c].pooled_added[99] * 1000 for c in levels], width, label=name)
        middle.bar(xs, [_median(by[name, c].per_core()) for c in levels], width, label=name)
    for ax in (left, middle):
        ax.set_xticks(range(len(levels)), [f"{c} streams" for c in levels])
        ax.legend()
    left.set_ylabel("ms added to p99 vs the direct P/D legs")
    left.set_title("Added p99 latency (streamed)")
    middle.set_ylabel("requests per CPU-second of the router")
    middle.set_title("Throughput per core (P/D, 2 legs)")
    names = [q.name for q in quality]
    metrics = [
        ("TTFT p50", lambda q: q.ttft(50)),
        ("TTFT p99", lambda q: q.ttft(99)),
        ("ITL p99", lambda q: q.itl(99)),
    ]
    width = 0.8 / max(1, len(quality))
    for i, q in enumerate(quality):
        values = [fn(q) * 1000 for _, fn in metrics]
        right.bar(
            [m + (i - (len(quality) - 1) / 2) * width for m in range(len(metrics))],
            values,
            width,
            label=names[i],
        )
    right.set_xticks(range(len(metrics)), [m for m, _ in metrics])
    right.set_yscale("log")
    right.set_ylabel("ms (log scale)")
    right.set_title("Routing quality: shared prefixes + long-prompt bursts")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out: Path,
    env: dict[str, Any],
    overhead: list[Any],
    quality: list[Any],
    workload: Workload,
    n_requests: int,
    elapsed: float,
    why_no_router: str,
    repeats: int = 1,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _plot(out / PLOT, overhead, quality)
    lines = [
        "# Benchmarks",
        "",
        "## Gateway: overhead and routing quality",
        "",
        f"Generated by `python bench/gateway_bench.py` on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s. "
        f"Machine: {env['cpus']} CPUs shared by the simulators, the routers and the load "
        f"generator and, at times, other work (load average {env['load'][0]:.1f} at the start, "
        f"{env.get('load_end', env['load'])[0]:.1f} at the end); Python {env['python']}; "
        f"vllm-router {env['vllm_router']}.",
        "",
    ]
    if env["load"][0] > 2 * env["cpus"]:
        lines += [
            f"**A busy machine:** a load average of {env['load'][0]:.1f} on {env['cpus']} CPUs "
            "means several runnable processes per core, most of them other work; latencies then "
            "measure mostly that queueing (even the direct path's). The per-core and CPU per "
            "1k tokens figures count only each router's own CPU time: compare those.",
            "",
        ]
    if why_no_router:
        lines += [f"**vllm-router was not measured: {why_no_router}.**", ""]
    lines += [
        "All processes run on 127.0.0.1 against `disagg sim` workers; every router in a table saw",
        "the same simulators and the same requests in the same run. Latencies are what the client",
        "measured. vllm-router comes from PyPI, installed in its own virtualenv",
        "(`python3 -m venv /tmp/vr-venv && /tmp/vr-venv/bin/pip install vllm-router`; the",
        "benchmark finds it via `--vllm-router`, `$VLLM_ROUTER`, `PATH` or that path).",
        "The last row of each table is ours / vllm-router for every figure (below 1x:",
        "ours is lower -- better for latencies, worse for throughput).",
        "",
        "### Overhead",
        "",
        "One prefill and two decode sims at `--sim-speedup 100` (engine time near zero), unique",
        f"~400-token prompts, {TOKENS} output tokens streamed (one SSE event each). For 1, 32 and",
        "256 concurrent streams, each path in turn serves a closed loop (every stream sends its",
        f"next request when the last one ended) for {env.get('phase_seconds', 4):g} s",
        f"({env.get('busy_phase_seconds', 10):g} s above 64 streams, where a round of requests",
        "takes seconds and a short phase would be mostly its ramp-up and drain). At 1 stream the",
        "paths are interleaved instead (each request through the next path of a shuffled order,",
        "so all paths see the machine of the same seconds; a router's CPU is then counted while",
        f"its own requests were in flight), {env.get('single_phase_seconds', 4):g} s of requests",
        "per path: the added p99 is a difference of two tails. The sweep ran",
        f"{env.get('overhead_repeats', 5)} times (each repeat starting with another path) and",
        "the latencies below are over all the repeats' requests together (pooled), the other",
        "figures the median of the repeats; (min-max) is the spread of the repeats where a",
        "figure is a goal of issue 16. *direct* = the benchmark itself",
        "doing the two P/D legs (prefill with `max_tokens: 1` + `kv_transfer_params`, then the",
        "decode stream), i.e. a proxy that costs nothing. *Added* pXX = a router's pXX latency",
        "(request sent to last byte) minus the direct path's pXX at the same concurrency, both",
        "pooled (its spread: the same difference in each repeat). *req/s per core* = completed",
        "requests / CPU seconds the router process",
        "used (all its threads); *CPU ms per 1k tokens* = the router's CPU per 1,000 streamed",
        "tokens. Our gateway ran with `--min-uncached-prompt-tokens 0` so that it, too,",
        "disaggregates every request, with its admission limits raised to vllm-router's",
        f"`--max-concurrent-requests 1024`, {env.get('gateway_workers', 1)} gateway process(es).",
        "The load generator is one Python process on the same 2 cores with a lean HTTP client",
        "(`bench/leanclient.py`: httptools, one write per request, one wake-up per answer; with",
        "httpx every phase had run at 35-100 req/s whatever its streams, the client setting the",
        "pace). Past a few streams the three Python sims on those cores set the pace; the",
        "direct path's client does both legs itself -- compare the routers with each other there.",
        "",
    ]
    lines += markdown_table(overhead_rows(overhead))
    lines += ["", goals(overhead) + "."]
    errors = {f"{o.name} at {o.concurrency}": o.errors for o in overhead if o.errors}
    if errors:
        lines += ["", f"Failed requests during the overhead runs: {errors}."]
    lines += [
        "",
        "### Routing quality",
        "",
        f"Four sims at real speed (Llama-3.1-8B on one H100 each, the simulator's defaults). One "
        f"seeded workload of {n_requests} streamed requests over {workload.seconds:.0f} s, run "
        f"{repeats} times per setup with the setups alternating, results pooled: chat "
        f"requests at {workload.rate:g}/s (Poisson) sharing {workload.prefixes} system prompts of "
        f"~{2 * workload.prefix_words} tokens (Pareto popularity) plus a "
        f"~{2 * workload.suffix_words}-token user turn, {workload.max_tokens} output tokens; and "
        f"every {workload.burst_every:g} s a burst of {workload.burst_size} unique "
        f"~{2 * workload.burst_words}-token prompts ({workload.burst_max_tokens} output tokens).",
        "(a) the four sims aggregated behind our gateway in round-robin mode; (b) two prefill +",
        "two decode sims through our gateway with its default routing (prefix affinity + load,",
        "selective disaggregation at 256 uncached tokens); (c) the same two + two through",
        "vllm-router (`--prefill-policy cache_aware --decode-policy power_of_two`). Prefix caches",
        "are reset between setups. *short TTFT* = the shared-prefix chat requests only.",
        "*gaps > 25 ms*: the share of inter-token gaps over 25 ms as the client saw them, and as",
        "the sims' own `vllm:inter_token_latency_seconds` histograms recorded them -- the engines'",
        "tail without any relay. Both are wall-clock on a shared 2-core machine, so a router that",
        "burns more CPU also slows the simulators' own loops: *router CPU s* is what each router",
        "process used during its runs.",
        "",
    ]
    lines += markdown_table(quality_rows(quality))
    lines += [
        "",
        "Run-to-run spread (TTFT p50 / TTFT p99 / ITL p99, ms, each run before pooling):",
        "",
    ]
    for q in quality:
        runs = "; ".join(" / ".join(_ms(x) for x in run) for run in q.runs)
        lines.append(f"* {q.name}: {runs}")
    lines += [
        "",
        "How to read it. P/D moves the long prefills off the workers that stream tokens (in the",
        "aggregated setup a burst lands inside decode steps), but it also gives prefill half the",
        "workers (2 of 4): with these bursts that queueing is why both P/D setups can show a",
        "higher TTFT p99 than the aggregated one. Our gateway's selective disaggregation serves",
        "a request whose prefix the decode",
        "worker already caches *decode-only*: one hop and no KV transfer, hence the lower TTFT",
        "for the shared-prefix requests -- at the price of a small local prefill (the uncached",
        "user turn) inside a decode step now and then, which lengthens those steps and shows in",
        "the ITL tail. `selective.minUncachedPromptTokens` sets that trade (0 = always P/D, as",
        "vllm-router does). The tails (p99) are also where a shared 2-core machine is noisiest:",
        "the simulators' own clocks are wall-clock, so any CPU spike (another process, a",
        "router's relay) shows up as a slow engine step -- compare the run-to-run spread above",
        "before reading much into a p99 ratio.",
    ]
    if any(o.pooled_added[99] < 0 for o in overhead if o.name != "direct"):
        lines += [
            "The overhead table's negative *added p99* is that noise too: in this run the direct",
            "path had the worse outliers.",
        ]
    lines += ["", f"![gateway benchmark]({PLOT})", ""]
    target = out / "benchmarks.md"
    old = target.read_text() if target.exists() else ""
    kept = []
    # Sections other benchmarks own (bench/precise_bench.py, bench/gpu/report.py,
    # bench/operator_scale.py): keep them.
    scale = ("<!-- operator-scale:begin -->", "<!-- operator-scale:end -->")
    for begin, end in ((PRECISE_BEGIN, PRECISE_END), (REAL_VLLM_BEGIN, REAL_VLLM_END), scale):
        if begin in old and end in old:
            kept.append(old[old.index(begin) : old.index(end) + len(end)])
    target.write_text("\n".join(lines) + "".join(f"\n{k}\n" for k in kept))

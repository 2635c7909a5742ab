"""Eager vLLM measured pass by pass, unpinned and pinned: is its spread the engine's or the host's?

    python -m bench.gpu.eager_passes --out $OUT/eager-passes.json --budget 480   # GPU machine
    python -m bench.gpu.eager_passes --engine sim --out /tmp/e.json             # CPU proof

An ``--enforce-eager`` engine launches each layer's kernels from Python, so its step is CPU-bound;
in the fidelity runs (``bench/fidelity.py``, all five timing engines up) its ITL p50 moved up to
~2x between passes of one point.  Here only the ``eager`` engine runs (nothing else on the GPU or
the CPUs but this driver), and the same points -- TTFT at 512..8192 prompt tokens, ITL p50/p90 of
1..64 streams of 256 output tokens after 128-token prompts, exactly as ``bench/fidelity.py``
measures them -- are measured in alternating passes:

* ``unpinned``: every process may run on every CPU (as the fidelity runs did);
* ``pinned``: the engine core (the process that launches the kernels) on four CPUs of its own,
  the API server on two others, this driver and its client processes on the rest
  (:mod:`bench.gpu.affinity`).

Then the eager constant of the timing model (``eager_layer_launch_s``) is refitted on the pinned
passes' ``FIT`` points (``bench/gpu/fidelity_fit.py``: the same fit the report makes, every
other constant kept as ``disagg.planner.measured`` has it), and the eager simulator, started from
the same rendering with that fit, is measured the same way, pinned (``sim_refit``): the simulator
after calibration, at its client, on this machine.  Then one short pass of each placement with
four busy loops beside them (unconfined when unpinned, on the
client's CPUs when pinned): does pinning shield the engine from a busy host?  Each pass records
its figures and what the host did meanwhile (load, steal time, the engine core's involuntary
context switches and CPU share, MHz, a fixed loop's speed).  The quiet passes of each placement
are pooled in ``bench/fidelity.py``'s format (``pooled.<placement>``), which the report reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from bench.fidelity import (
    BATCHES,
    TTFT_LENGTHS,
    Driver,
    itl_row,
    ms,
    pct,
    sim_plans,
    stream,
    streams_in_processes,
)
from bench.gpu import affinity, engines, fidelity_fit
from bench.gpu.plans import timing_engines
from bench.gpu.record import Results

from disagg.planner.calibration import Calibration, calibration_document
from disagg.planner.measured import H200_VLLM_0_26

PROMPT = 128
OUTPUT = 256
#: The short passes beside busy loops: the extremes of the batch sizes and one short prompt.
LOADED_BATCHES = (1, 64)
LOADED_LENGTHS = (512,)
SPINNERS = 4


class Pooled:
    """Every quiet pass's raw figures of one placement, summarised like ``bench/fidelity.py``."""

    def __init__(self) -> None:
        self.ttft: dict[int, list[float]] = {}
        self.gaps: dict[int, list[float]] = {}
        self.passes: dict[int, list[dict[str, Any]]] = {}

    def add(
        self, record: dict[str, Any], ttft: dict[int, list[float]], gaps: dict[int, list[float]]
    ) -> None:
        for length, values in ttft.items():
            self.ttft.setdefault(length, []).extend(values)
        for batch, values in gaps.items():
            self.gaps.setdefault(batch, []).extend(values)
            self.passes.setdefault(batch, []).append(
                {**record["itl"][str(batch)], "loadavg_1m": record["host"]["loadavg_1m"]}
            )

    def summary(self) -> dict[str, Any]:
        itl = {}
        for batch, gaps in self.gaps.items():
            itl[str(batch)] = itl_row(gaps, PROMPT + 128, self.passes[batch], [])
        ttft = {
            str(length): {"ttft_ms": [ms(v) for v in values], "p50_ms": ms(pct(values, 50))}
            for length, values in self.ttft.items()
        }
        return {"ttft": {"eager": ttft}, "itl": {"eager": itl}}


async def measure_pass(
    driver: Driver, base: str, lengths: tuple[int, ...], batches: tuple[int, ...], trials: int
) -> tuple[dict[str, Any], dict[int, list[float]], dict[int, list[float]]]:
    """One pass: TTFT of ``trials`` lone requests per length, then ITL per batch size."""
    ttft: dict[int, list[float]] = {}
    gaps_of: dict[int, list[float]] = {}
    record: dict[str, Any] = {"ttft": {}, "itl": {}, "errors": []}
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(300.0), limits=limits, trust_env=False
    ) as http:
        await stream(http, base, driver.ids(512), 4)  # warm-up, not recorded
        for length in lengths:
            runs = [await stream(http, base, driver.ids(length), 4) for _ in range(trials)]
            ttft[length] = [r.ttft for r in runs if r.ttft is not None]
            record["ttft"][str(length)] = {
                "ttft_ms": [ms(v) for v in ttft[length]],
                "p50_ms": ms(pct(ttft[length], 50)),
            }
            record["errors"] += [r.error for r in runs if r.error]
    for batch in batches:
        prompts = [driver.ids(PROMPT) for _ in range(batch)]
        runs = await asyncio.to_thread(streams_in_processes, base, prompts, OUTPUT)
        gaps = [g for r in runs for g in r.gaps(skip=4)]
        gaps_of[batch] = gaps
        record["itl"][str(batch)] = {
            "p50_ms": ms(pct(gaps, 50)),
            "p90_ms": ms(pct(gaps, 90)),
            "mean_ms": ms(statistics.fmean(gaps)) if gaps else None,
            "gaps": len(gaps),
        }
        record["errors"] += [r.error for r in runs if r.error]
    return record, ttft, gaps_of


async def warm_up(driver: Driver, base: str) -> None:
    """A burst of 8 streams before the first pass (as ``bench/fidelity.py``'s ITL does)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), trust_env=False) as http:
        await asyncio.gather(*(stream(http, base, driver.ids(PROMPT), 32) for _ in range(8)))


def refit(real: dict[str, Any]) -> dict[str, Any]:
    """The eager constant fitted on ``real``'s eager ``FIT`` points (the report's fit, from
    the preset the simulator uses), as a calibration file."""
    fitted, labels = fidelity_fit.refit_eager({"real": real}, H200_VLLM_0_26)
    cal = Calibration("h200", fitted, "eager refit on this machine")
    return calibration_document(cal, fitted_on=labels)


def schedule(full: int) -> list[tuple[str, bool]]:
    """``full`` quiet passes of each placement, alternating (a drift of the host hits both
    alike), then (after the refit simulator) one loaded pass of each."""
    quiet = [(placement, False) for _ in range(full) for placement in ("unpinned", "pinned")]
    return [*quiet, ("unpinned", True), ("pinned", True)]


def simulate(
    args: argparse.Namespace, results: Results, place: affinity.Layout, calibration: Path
) -> None:
    """The eager simulator with ``calibration``, measured pinned, exactly like the engine."""
    os.environ["DISAGG_SIM_CALIBRATION"] = str(calibration)
    os.environ.setdefault("DISAGG_SIM_LINK", "ucx-tcp-emulation")
    plan = next(p for p in sim_plans() if p.name == "eager-sim")
    running = engines.start(plan, "sim")
    try:
        ready = engines.wait_ready([plan.name], 60.0)
        if "ready_s" not in ready.get(plan.name, {}):
            results.put("sim_refit_error", ready)
            return
        affinity.pin_engine(running.pid, place)
        affinity.pin_self(place.client)
        driver = Driver(random.Random(20))
        asyncio.run(warm_up(driver, plan.url))
        pooled = Pooled()
        window = affinity.Window(None)
        record, ttft, gaps = asyncio.run(
            measure_pass(driver, plan.url, args.lengths, args.batches, args.trials)
        )
        record = {"placement": "pinned", "host": window.close(), **record}
        pooled.add(record, ttft, gaps)
        results.put("sim_refit", {"calibration": str(calibration), "pass": record,
                                  **pooled.summary()})  # fmt: skip
    finally:
        affinity.pin_self(affinity.everything())
        engines.stop(plan.name)


def run(args: argparse.Namespace) -> None:
    results = Results(args.out)
    started = time.monotonic()

    def left() -> float:
        return args.budget - (time.monotonic() - started)

    place = affinity.layout()
    results.put("machine", affinity.machine())
    results.put("layout", place.as_dict())
    plan = next(p for p in timing_engines() if p.name == "eager")
    running = engines.start(plan, args.engine)
    ready = engines.wait_ready([plan.name], min(args.wait, max(10.0, left() - 60)))
    results.put("engine", {"name": plan.name, "program": args.engine, "ready": ready,
                           "argv": running.argv})  # fmt: skip
    if "ready_s" not in ready.get(plan.name, {}):
        return
    driver = Driver(random.Random(20))
    asyncio.run(warm_up(driver, plan.url))
    pooled = {"unpinned": Pooled(), "pinned": Pooled()}
    last_full = 60.0
    refitted = False
    try:
        for index, (placement, loaded) in enumerate(schedule(args.full_passes)):
            if loaded and not refitted and pooled["pinned"].gaps:
                refitted = True  # the engine stays up, idle, while the simulator is measured
                document = results.put("refit", refit(pooled["pinned"].summary()))
                path = args.out.parent / "eager-refit-calibration.json"
                path.write_text(json.dumps(document, indent=1))
                if left() > last_full * 1.2 + 20:
                    simulate(args, results, place, path.resolve())
            lengths = LOADED_LENGTHS if loaded else args.lengths
            batches = LOADED_BATCHES if loaded else args.batches
            need = last_full * (0.45 if loaded else 1.1)
            if left() < need:
                results.append("skipped", {"pass": index, "placement": placement,
                                           "loaded": loaded, "left_s": round(left())})  # fmt: skip
                continue
            pinned = placement == "pinned"
            placed = affinity.pin_engine(running.pid, place if pinned else None)
            affinity.pin_self(place.client if pinned else affinity.everything())
            busy = affinity.spinners(SPINNERS, place.client if pinned else None) if loaded else []
            members = affinity.group(running.pid)
            window = affinity.Window(affinity.engine_core(members))
            began = time.monotonic()
            try:
                record, ttft, gaps = asyncio.run(
                    measure_pass(driver, plan.url, lengths, batches, args.trials)
                )
            finally:
                affinity.stop_spinners(busy)
            host = window.close()
            if not loaded:
                last_full = time.monotonic() - began
            record = {"pass": index, "placement": placement, "loaded": loaded,
                      "placed": placed, "host": host, **record}  # fmt: skip
            results.append("passes", record)
            if not loaded:
                pooled[placement].add(record, ttft, gaps)
                results.put("pooled", {k: v.summary() for k, v in pooled.items() if v.gaps})
            itl = ", ".join(f"b{b} {record['itl'][str(b)]['p50_ms']}" for b in batches)
            state = f"{placement}{' loaded' if loaded else ''}"
            print(
                f"pass {index} {state}: ITL p50 {itl} ms; load {host['loadavg_1m']}, "
                f"steal {host['steal_share_all']}",
                flush=True,
            )
    finally:
        affinity.pin_self(affinity.everything())
        results.put("log_tail", engines.log_tail(plan.name, 30))
        engines.stop(plan.name)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", choices=["vllm", "sim"], default="vllm")
    parser.add_argument("--budget", type=float, default=480.0)
    parser.add_argument("--wait", type=float, default=180.0, help="longest wait for the engine")
    parser.add_argument("--trials", type=int, default=5, help="TTFT requests per length and pass")
    parser.add_argument("--full-passes", type=int, default=3, help="quiet passes per placement")
    parser.add_argument("--lengths", type=_ints, default=TTFT_LENGTHS, help="e.g. 512,2048")
    parser.add_argument("--batches", type=_ints, default=BATCHES, help="e.g. 1,16,64")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``disagg plan``: should you disaggregate prefill from decode, and with how many GPUs.

The one module of the planner that does I/O: it parses flags, reads an optional Hugging Face
``config.json`` and an optional calibration file, and prints the plan as a table, JSON or a
DisaggDeployment suggestion.  Every bad input ends as one ``disagg plan: error: ...`` line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from disagg.planner.calibration import load_calibration
from disagg.planner.catalog import get_model
from disagg.planner.emit import deployment_manifest, manifest_comment
from disagg.planner.errors import PlannerError
from disagg.planner.hardware import DEFAULT_GPU, GPUS, get_gpu
from disagg.planner.measured import SOURCES, default_efficiency
from disagg.planner.models import DEFAULT_MODEL, MODELS, ModelSpec, kv_bytes_per_token
from disagg.planner.plan import make_plan
from disagg.planner.report import render_text
from disagg.planner.workload import SLO, Deployment, Workload

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}

EPILOG = """\
examples:
  disagg plan --model llama-3.1-70b --prompt-tokens 4096 --link-gbps 100
  disagg plan --model llama-3.1-8b --rate 20 --prompt-tokens 2000 --output-tokens 300 --json
  disagg plan --model ./config.json --gpu h200 --rate 5 --ttft-p99-ms 1000 --itl-p99-ms 40
  disagg plan --model llama-3.1-70b --rate 4 --emit > llama-70b.yaml
  disagg plan --calibration docs/calibration-h100.json --model llama-3.1-8b
  disagg plan --list

The five checks: decode share of GPU time, KV transfer size vs link (and vs the prefill it
saves), prefix hit rate, GPU count (disaggregated vs aggregated at the same SLOs), network
(RDMA, link utilisation).  Verdict: disaggregate, disaggregate-selectively or stay-aggregated.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="disagg plan",
        description="Capacity planner: KV-cache bytes per token and per request, KV transfer "
        "time on the link, roofline prefill and decode times, the prefill (P) and decode (D) "
        "replica counts that meet the SLOs at the arrival rate (and the aggregated count for "
        "comparison), five checks, and a verdict.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("model and hardware")
    m.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"preset name or path of a Hugging Face config.json (default "
        f"{DEFAULT_MODEL}; --list shows presets)",
    )
    m.add_argument("--dtype", choices=sorted(DTYPE_BYTES), help="weight dtype (default: model's)")
    m.add_argument(
        "--kv-dtype",
        choices=sorted(DTYPE_BYTES),
        help="KV-cache dtype (default: weights' 16-bit dtype; fp8 halves the KV)",
    )
    m.add_argument("--gpu", default=DEFAULT_GPU, help=f"GPU preset (default {DEFAULT_GPU})")
    m.add_argument(
        "--calibration",
        metavar="FILE",
        help="calibration JSON from bench/calibrate_gpu.py (must match --gpu)",
    )
    w = p.add_argument_group("workload")
    w.add_argument(
        "--prompt-tokens", type=int, metavar="N", default=4096, help="mean prompt length (4096)"
    )
    w.add_argument(
        "--prompt-tokens-p99", type=int, metavar="N", default=0, help="p99 prompt length (= mean)"
    )
    w.add_argument(
        "--output-tokens", type=int, metavar="N", default=256, help="mean output length (256)"
    )
    w.add_argument(
        "--output-tokens-p99", type=int, metavar="N", default=0, help="p99 output length (= mean)"
    )
    w.add_argument(
        "--rate",
        "--arrival-rate",
        dest="rate",
        type=float,
        default=1.0,
        metavar="RPS",
        help="arrival rate, requests/s (1.0)",
    )
    w.add_argument(
        "--prefix-hit-rate",
        type=float,
        default=0.0,
        metavar="X",
        help="share of prompt tokens already in a prefix cache, 0..1 (0)",
    )
    s = p.add_argument_group("SLOs")
    s.add_argument(
        "--ttft-p99-ms", type=float, metavar="X", default=2000.0, help="TTFT p99 objective (2000)"
    )
    s.add_argument(
        "--itl-p99-ms", type=float, metavar="X", default=50.0, help="ITL p99 objective (50)"
    )
    d = p.add_argument_group("deployment")
    d.add_argument(
        "--link-gbps",
        type=float,
        metavar="X",
        default=100.0,
        help="KV link speed per replica, Gb/s (100)",
    )
    d.add_argument(
        "--transport",
        choices=["ib", "roce", "efa", "tcp"],
        default="ib",
        help="KV fabric: RDMA (ib, roce, efa) or tcp (default ib)",
    )
    d.add_argument(
        "--prefill-tp", type=int, metavar="N", default=0, help="pin prefill tensor parallelism"
    )
    d.add_argument(
        "--decode-tp", type=int, metavar="N", default=0, help="pin decode tensor parallelism"
    )
    d.add_argument(
        "--aggregated-tp",
        type=int,
        default=0,
        metavar="N",
        help="pin the aggregated baseline's tensor parallelism",
    )
    d.add_argument(
        "--gpu-memory-utilization", type=float, metavar="X", default=0.9, help="vLLM's (0.9)"
    )
    d.add_argument("--max-num-seqs", type=int, metavar="N", default=256, help="vLLM's (256)")
    d.add_argument(
        "--chunk-tokens",
        type=int,
        default=0,
        metavar="N",
        help="aggregated chunked-prefill budget per step (vLLM's default)",
    )
    d.add_argument(
        "--gpu-budget", type=int, metavar="N", default=0, help="most GPUs allowed (no limit)"
    )
    d.add_argument(
        "--min-uncached-prompt-tokens",
        type=int,
        default=256,
        metavar="N",
        help="selective-disaggregation threshold (256)",
    )
    o = p.add_argument_group("output").add_mutually_exclusive_group()
    o.add_argument("--json", action="store_true", help="machine-readable plan")
    o.add_argument(
        "--emit",
        action="store_true",
        help="print a DisaggDeployment (disagg.dev/v1alpha1) YAML suggestion",
    )
    o.add_argument("--list", action="store_true", help="list model and GPU presets")
    p.add_argument("--name", help="metadata.name for --emit (default: from the model)")
    return p


def _model(args: argparse.Namespace) -> ModelSpec:
    model = get_model(args.model)
    if args.dtype:
        model = replace(
            model,
            dtype_bytes=DTYPE_BYTES[args.dtype],
            kv_dtype_bytes=model.kv_dtype_bytes or model.dtype_bytes,
        )
    if args.kv_dtype:
        model = replace(model, kv_dtype_bytes=DTYPE_BYTES[args.kv_dtype])
    return model


def _list() -> str:
    lines = ["models:"]
    for m in MODELS.values():
        lines.append(
            f"  {m.name:<16} {m.display_name:<38} {kv_bytes_per_token(m):>9,} KV bytes/token"
        )
    lines.append("gpus:")
    for g in GPUS.values():
        lines.append(
            f"  {g.name:<16} {g.display_name:<26} {g.peak_bf16_flops / 1e12:>6.0f} TFLOP/s bf16 "
            f"{g.hbm_bandwidth / 1e12:>5.2f} TB/s {g.memory_bytes / 2**30:>5.0f} GiB"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    if args.list:
        return _list()
    gpu = get_gpu(args.gpu)
    efficiency, source = default_efficiency(gpu), SOURCES.get(gpu.name, "")
    if args.calibration:
        cal = load_calibration(args.calibration)
        if cal.gpu != gpu.name:
            raise PlannerError(
                f"{args.calibration} calibrates {cal.gpu}, not {gpu.name} (pass --gpu {cal.gpu})"
            )
        efficiency, source = cal.efficiency, f"calibration {args.calibration} ({cal.device})"
    workload = Workload(
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        arrival_rate=args.rate,
        prefix_hit_rate=args.prefix_hit_rate,
        prompt_tokens_p99=args.prompt_tokens_p99,
        output_tokens_p99=args.output_tokens_p99,
    )
    deployment = Deployment(
        link_gbps=args.link_gbps,
        transport=args.transport,
        prefill_tp=args.prefill_tp,
        decode_tp=args.decode_tp,
        aggregated_tp=args.aggregated_tp,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs,
        chunk_tokens=args.chunk_tokens,
        gpu_budget=args.gpu_budget,
        min_uncached_prompt_tokens=args.min_uncached_prompt_tokens,
    )
    slo = SLO(ttft_p99_ms=args.ttft_p99_ms, itl_p99_ms=args.itl_p99_ms)
    plan = make_plan(_model(args), gpu, workload, slo, deployment, efficiency)
    if args.json:
        return json.dumps(plan.to_dict(), indent=2)
    if args.emit:
        import yaml

        manifest = deployment_manifest(plan, args.name)
        return manifest_comment(plan) + "\n" + yaml.safe_dump(manifest, sort_keys=False).rstrip()
    return render_text(plan, source)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        output = run(args)
    except PlannerError as exc:
        print(f"disagg plan: error: {exc}", file=sys.stderr)
        return 2
    print(output)
    return 0

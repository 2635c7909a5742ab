"""Calibrate the planner's roofline on a real GPU (PyTorch, random weights).

Measures, on the first CUDA device:
  * dense bf16 matmul throughput (8192^3 GEMM) and HBM copy bandwidth (device-to-device copy,
    bytes read + written), against the GPU preset's spec sheet;
  * a stack of Llama-3.1-8B-shaped decoder layers (fused QKV, RoPE, causal GQA flash attention,
    SwiGLU MLP, RMSNorm): prefill time at 512..8192 prompt tokens (eager, like a prefill engine
    step) and decode step time at batch 1..256 over a KV cache (captured in a CUDA graph, as vLLM
    runs decode);
then fits the planner's Efficiency (disagg.planner.calibration.fit_efficiency), writes a
calibration JSON that ``disagg plan --calibration FILE`` loads, and prints predicted vs measured
error per point, with spec-sheet defaults and with the calibration.

  python bench/calibrate_gpu.py --gpu h100-sxm --out-json docs/calibration-h100.json \
      --out-md docs/calibration.md
  python bench/calibrate_gpu.py --from-raw docs/calibration-h100.json ...   # refit, no GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from disagg.planner.calibration import (
    Calibration,
    Measurement,
    calibration_document,
    error_table,
    fit_efficiency,
    layer_model,
)
from disagg.planner.catalog import get_model
from disagg.planner.hardware import get_gpu


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", default="h100-sxm", help="GPU preset the device is (default h100-sxm)")
    p.add_argument("--model", default="llama-3.1-8b", help="model whose layer shape to time")
    p.add_argument("--layers", type=int, default=4, help="distinct layers per timed forward")
    # 16k and 32k on top of the 512..8192 range: there attention is a large share of the FLOPs,
    # which is what lets the fit tell attention efficiency from GEMM efficiency.
    p.add_argument(
        "--prefill-tokens", type=_ints, default=_ints("512,1024,2048,4096,8192,16384,32768")
    )
    p.add_argument("--decode-batches", type=_ints, default=_ints("1,2,4,8,16,32,64,128,256"))
    p.add_argument("--decode-context", type=int, default=2048, help="KV tokens per sequence")
    p.add_argument("--long-context", type=int, default=8192, help="second decode context")
    p.add_argument("--long-context-batches", type=_ints, default=_ints("1,16,64"))
    p.add_argument("--out-json", type=Path, required=True)
    p.add_argument("--out-md", type=Path, help="also write the error table as Markdown")
    p.add_argument("--from-raw", type=Path, help="refit from a previous JSON's raw measurements")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- GPU measurement


def measure(args: argparse.Namespace) -> tuple[list[Measurement], dict[str, Any], str]:
    import torch
    import torch.nn.functional as F

    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    torch.manual_seed(0)
    spec = get_gpu(args.gpu)
    model = get_model(args.model)

    def time_fn(fn: Any, min_time: float = 0.3, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        once = time.perf_counter() - t0
        iters = max(5, min(200, int(min_time / max(once, 1e-6))))
        samples = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return statistics.median(samples)

    # Microbenchmarks.
    def matmul_flops_per_s(n: int = 8192) -> float:
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        # A long warm-up lets the clocks ramp before timing (boost clock, power state).
        return 2 * n**3 / time_fn(lambda: a @ b, min_time=1.0, warmup=50)

    def copy_bytes_per_s(size: int = 2 * 1024**3) -> float:
        src = torch.empty(size, device=dev, dtype=torch.uint8)
        dst = torch.empty_like(src)
        return 2 * size / time_fn(lambda: dst.copy_(src))

    matmul_flops = matmul_flops_per_s()
    copy_bw = copy_bytes_per_s()
    torch.cuda.empty_cache()
    micro = {
        "matmul_bf16_8192_tflops": matmul_flops / 1e12,
        "matmul_fraction_of_spec": matmul_flops / spec.peak_bf16_flops,
        "hbm_copy_tbps_read_plus_write": copy_bw / 1e12,
        "hbm_copy_fraction_of_spec": copy_bw / spec.hbm_bandwidth,
    }
    print(f"matmul bf16 8192^3: {matmul_flops / 1e12:.0f} TFLOP/s "
          f"({100 * micro['matmul_fraction_of_spec']:.0f}% of spec)")  # fmt: skip
    print(f"HBM copy: {copy_bw / 1e12:.2f} TB/s read+write "
          f"({100 * micro['hbm_copy_fraction_of_spec']:.0f}% of spec)")  # fmt: skip

    h, heads, kvh, d = (
        model.hidden_size,
        model.num_attention_heads,
        model.num_kv_heads,
        model.head_dim,
    )
    inter, group = model.intermediate_size, heads // kvh
    bf = torch.bfloat16

    def weight(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, device=dev, dtype=bf) * (cols**-0.5)

    layers = [
        {
            "qkv": weight((heads + 2 * kvh) * d, h),
            "o": weight(h, heads * d),
            "gate_up": weight(2 * inter, h),
            "down": weight(h, inter),
            "n1": torch.ones(h, device=dev, dtype=bf),
            "n2": torch.ones(h, device=dev, dtype=bf),
        }
        for _ in range(args.layers)
    ]
    max_pos = max([*args.prefill_tokens, args.decode_context, args.long_context]) + 2
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    freqs = torch.outer(torch.arange(max_pos, device=dev, dtype=torch.float32), inv)
    cos, sin = freqs.cos().to(bf), freqs.sin().to(bf)

    def rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x [..., seq, d]
        c, s = cos[pos], sin[pos]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    def mlp(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        gu = F.linear(F.rms_norm(x, (h,), w["n2"]), w["gate_up"])
        g, u = gu.split(inter, dim=-1)
        return x + F.linear(F.silu(g) * u, w["down"])

    def prefill(x: torch.Tensor) -> torch.Tensor:  # x [1, T, h]
        t = x.shape[1]
        pos = torch.arange(t, device=dev)
        for w in layers:
            qkv = F.linear(F.rms_norm(x, (h,), w["n1"]), w["qkv"])
            q, k, v = qkv.split([heads * d, kvh * d, kvh * d], dim=-1)
            q = rope(q.view(1, t, heads, d).transpose(1, 2), pos)
            k = rope(k.view(1, t, kvh, d).transpose(1, 2), pos)
            v = v.view(1, t, kvh, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + F.linear(o.transpose(1, 2).reshape(1, t, heads * d), w["o"])
            x = mlp(x, w)
        return x

    points: list[Measurement] = []
    for t in args.prefill_tokens:
        x = torch.randn(1, t, h, device=dev, dtype=bf)
        with torch.inference_mode():
            s = time_fn(lambda x=x: prefill(x))
        points.append(Measurement("prefill", t, 0, s))
        print(f"prefill {t:>5} tokens: {s * 1e3:8.3f} ms  ({args.layers} layers)")

    def decode_point(batch: int, ctx: int) -> float:
        caches = [
            (torch.randn(batch, kvh, ctx + 1, d, device=dev, dtype=bf),
             torch.randn(batch, kvh, ctx + 1, d, device=dev, dtype=bf))
            for _ in layers
        ]  # fmt: skip
        x = torch.randn(batch, 1, h, device=dev, dtype=bf)
        pos = torch.full((1,), ctx, device=dev, dtype=torch.long)

        def step() -> torch.Tensor:
            y = x
            for w, (kc, vc) in zip(layers, caches, strict=True):
                qkv = F.linear(F.rms_norm(y, (h,), w["n1"]), w["qkv"])
                q, k, v = qkv.split([heads * d, kvh * d, kvh * d], dim=-1)
                q = rope(q.view(batch, 1, heads, d).transpose(1, 2), pos)  # [B, H, 1, d]
                k = rope(k.view(batch, 1, kvh, d).transpose(1, 2), pos)
                kc[:, :, ctx : ctx + 1].copy_(k)
                vc[:, :, ctx : ctx + 1].copy_(v.view(batch, 1, kvh, d).transpose(1, 2))
                # GQA decode: the group's query heads act as query positions of one KV head.
                qg = q.reshape(batch, kvh, group, d)
                o = F.scaled_dot_product_attention(qg, kc, vc)
                y = y + F.linear(o.reshape(batch, 1, heads * d), w["o"])
                y = mlp(y, w)
            return y

        with torch.inference_mode():
            step()
            torch.cuda.synchronize()
            try:
                graph = torch.cuda.CUDAGraph()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    step()
                torch.cuda.current_stream().wait_stream(stream)
                with torch.cuda.graph(graph):
                    step()
                seconds = time_fn(graph.replay)
            except RuntimeError as exc:  # pragma: no cover - depends on the driver
                print(f"  (CUDA graph capture failed, timing eagerly: {exc})")
                seconds = time_fn(step)
        return seconds

    plan = [(b, args.decode_context) for b in args.decode_batches]
    plan += [(b, args.long_context) for b in args.long_context_batches]
    for batch, ctx in plan:
        s = decode_point(batch, ctx)
        torch.cuda.empty_cache()
        points.append(Measurement("decode", batch, ctx, s))
        print(f"decode batch {batch:>3} ctx {ctx:>5}: {s * 1e3:8.3f} ms  ({args.layers} layers)")

    bench = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "model_shape": args.model,
        "layers_per_forward": args.layers,
        "prefill": "eager, batch 1, causal SDPA (flash) with GQA",
        "decode": "CUDA graph replay, KV cache append + SDPA over the cache",
    }
    return points, {"microbenchmarks": micro, "benchmark": bench}, bench["device"]


# --------------------------------------------------------------------------- fit and report


def markdown_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| phase | tokens / batch | context | measured ms | predicted ms (spec defaults) "
        "| error | predicted ms (calibrated) | error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['kind']} | {r['tokens']} | {r['context']} | {r['measured_ms']:.3f} "
            f"| {r['predicted_default_ms']:.3f} | {100 * r['error_default']:+.1f}% "
            f"| {r['predicted_calibrated_ms']:.3f} | {100 * r['error_calibrated']:+.1f}% |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    gpu = get_gpu(args.gpu)
    if args.from_raw:
        previous = json.loads(args.from_raw.read_text())
        points = [
            Measurement(r["kind"], r["tokens"], r["context"], r["measured_ms"] / 1e3)
            for r in previous["points"]
        ]
        evidence = {k: previous[k] for k in ("microbenchmarks", "benchmark") if k in previous}
        device = previous.get("device", "")
        args.layers = previous.get("benchmark", {}).get("layers_per_forward", args.layers)
    else:
        points, evidence, device = measure(args)
    timed = layer_model(get_model(args.model), args.layers)
    efficiency = fit_efficiency(timed, gpu, points)
    rows = error_table(timed, gpu, points, efficiency)
    cal = Calibration(gpu=gpu.name, efficiency=efficiency, device=device)
    doc = calibration_document(cal, **evidence, points=rows)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown_table(rows)
    mean_abs = {
        key: statistics.mean(abs(r[key]) for r in rows)
        for key in ("error_default", "error_calibrated")
    }
    summary = (
        f"fitted efficiency: {json.dumps(asdict(efficiency))}\n"
        f"mean |error|: spec defaults {100 * mean_abs['error_default']:.1f}%, "
        f"calibrated {100 * mean_abs['error_calibrated']:.1f}%"
    )
    print(table)
    print(summary)
    if args.out_md:
        args.out_md.parent.mkdir(parents=True, exist_ok=True)
        args.out_md.write_text(
            f"# Calibration on {device or gpu.display_name}\n\n{summary}\n\n{table}\n"
        )
    print(f"wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

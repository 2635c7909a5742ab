"""Plot an autoscaling run (the trace e2e/test_autoscaling.py records) for docs/autoscaling.md.

Usage::

    pytest -s e2e/test_autoscaling.py -k load_step
    python bench/autoscaling_plot.py [TRACE.json] [--out docs/autoscaling.png]

Three panels over time since load start: the client load (requests in flight and completions per
second), the signals the autoscalers read (the gateway's per-pool admission queue, vLLM's
waiting queue summed per pool, and the gateway's busy workers as the HPA reads them), and
replicas per role (what the HPA wants, the pool's ``spec.replicas``, and the Deployment's ready
workers, i.e. after the guards).  The prefill scale-up decision is marked with the queue value
the HPA read, the steady phase is shaded.  It also prints the run's numbers, which the docs
quote.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_TRACE = (
    Path(os.environ.get("DISAGG_CACHE", str(Path.home() / ".cache" / "disagg")))
    / "logs"
    / "autoscaling-trace.json"
)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "autoscaling.png"
COLORS = {"prefill": "tab:blue", "decode": "tab:orange"}


def summary(trace: dict[str, Any]) -> str:
    marks, decided, ready = trace["marks"], trace.get("decided", {}), trace.get("scaled_up", {})
    at = trace.get("at_decision", {})
    start = marks.get("load_start", 0.0)
    lines = [
        f"requests ok {trace['ok']}, failed {trace['failed']}"
        + (f" (open loop, {trace['rate_per_s']} requests/s)" if trace.get("rate_per_s") else ""),
        f"at the prefill scale-up decision the HPA read: {at.get('hpa_metrics')} "
        f"(Prometheus: gateway queue {at.get('gateway_queue')}, vLLM waiting "
        f"{at.get('vllm_waiting')}, busy workers {at.get('busy_workers')})",
        f"load step -> second prefill worker Ready: "
        f"{ready.get('prefill', float('nan')) - start:.1f} s",
        f"steady phase {marks.get('steady_start', float('nan')):.1f}-"
        f"{marks.get('load_stop', float('nan')):.1f} s: "
        f"{len(trace.get('steady_flaps', []))} replica changes {trace.get('steady_flaps', [])}",
        *(f"HPA {e['hpa']}: {e['message']}" for e in trace.get("rescale_events", [])),
        *(
            f"{role}: scale-up decided {decided.get(role, float('nan')):.1f} s, "
            f"second worker Ready {ready.get(role, float('nan')):.1f} s after load start"
            for role in ("prefill", "decode")
            if role in decided or role in ready
        ),
        f"load stopped {marks.get('load_stop', float('nan')):.1f} s, "
        f"back at 1 replica {marks.get('scaled_down', float('nan')):.1f} s "
        f"({marks.get('scaled_down', 0) - marks.get('load_stop', 0):.1f} s later)",
    ]
    if trace.get("limited"):
        lines.append(f"guard: {trace['limited'][0]}")
    return "\n".join(lines)


def plot(trace: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = trace["samples"]
    t = [s["t"] for s in samples]
    fig, (ax_load, ax_queue, ax_rep) = plt.subplots(3, 1, figsize=(12, 8), sharex=True)

    ax_load.plot(t, [s["clients"] for s in samples], color="black", label="requests in flight")
    # Completions come in batches: a rate over the last 5 samples reads better than per second.
    rate = [
        (s["completed"] - samples[max(0, i - 5)]["completed"])
        / max(1e-6, s["t"] - samples[max(0, i - 5)]["t"])
        for i, s in enumerate(samples)
    ]
    ax_load.plot(t, rate, color="tab:green", label="completed / s (5 s window)")
    ax_load.set_ylabel("client load")
    ax_load.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)

    for role, color in COLORS.items():
        ax_queue.plot(
            t,
            [s["vllm_waiting"][role] or 0 for s in samples],
            color=color,
            label=f"{role}: vLLM waiting (sum over pods)",
        )
        ax_queue.plot(
            t,
            [s["gateway_queue"][role] or 0 for s in samples],
            color=color,
            linestyle=":",
            label=f"{role}: gateway queue",
        )
    if any(s.get("busy_workers") for s in samples):
        ax_queue.plot(
            t,
            [(s.get("busy_workers") or {}).get("prefill") or 0 for s in samples],
            color=COLORS["prefill"],
            linestyle="-.",
            label="prefill: gateway busy workers (1 min mean)",
        )
    decision = trace.get("decided", {}).get("prefill")
    at = trace.get("at_decision", {}).get("hpa_metrics", {})
    if decision is not None and "disagg_gateway_queue_depth" in at:
        ax_queue.axvline(decision, color=COLORS["prefill"], linewidth=0.8, linestyle="--")
        ax_queue.annotate(
            f"prefill scale-up: HPA read gateway queue {at['disagg_gateway_queue_depth']:g}"
            " per replica (target 4)",
            (decision, at["disagg_gateway_queue_depth"]),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=8,
        )
    ax_queue.set_ylabel("queued requests / workers")
    ax_queue.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)

    for role, color in COLORS.items():
        ax_rep.step(
            t,
            [s["pool_replicas"][role] or 0 for s in samples],
            where="post",
            color=color,
            linestyle="--",
            label=f"{role}: HPA's desire (pool spec.replicas)",
        )
        ax_rep.step(
            t,
            [s.get("deployment_replicas", {}).get(role) or 0 for s in samples],
            where="post",
            color=color,
            linestyle=":",
            label=f"{role}: Deployment replicas (after guards)",
        )
        ax_rep.step(
            t,
            [s["ready"][role] or 0 for s in samples],
            where="post",
            color=color,
            label=f"{role}: ready workers",
        )
    # Shade each stretch of samples during which the guards cut what an HPA asked for.
    start: float | None = None
    label = "guards clamp (GPU budget)"
    for prev, cur in zip([None, *samples], [*samples, None], strict=True):
        if cur is not None and cur.get("limited") and start is None:
            start = cur["t"]
        elif start is not None and (cur is None or not cur.get("limited")):
            end = prev["t"] if prev is not None else start
            ax_rep.axvspan(start, end, color="grey", alpha=0.2, label=label)
            label, start = "_", None
    marks = trace["marks"]
    if "steady_start" in marks and "load_stop" in marks:
        ax_rep.axvspan(
            marks["steady_start"], marks["load_stop"], color="tab:green", alpha=0.1,
            label="steady phase (no replica change allowed)",
        )  # fmt: skip
    ax_rep.set_ylabel("replicas")
    ax_rep.set_xlabel("seconds since load start")
    ax_rep.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax_rep.set_yticks(range(0, 4))

    for ax in (ax_load, ax_queue, ax_rep):
        for name in ("load_stop",):
            if name in trace["marks"]:
                ax.axvline(trace["marks"][name], color="red", linewidth=0.8)
    ax_load.set_title(
        "Autoscaling on the local cluster: a load step at 0 s, load stops at the red line"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", nargs="?", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    trace = json.loads(args.trace.read_text())
    print(summary(trace))
    plot(trace, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

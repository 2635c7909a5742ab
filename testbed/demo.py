"""``make demo``: the whole system on this machine, from nothing, in one command.

1. builds and starts a real one-node Kubernetes cluster (``testbed.cluster``), with fake GPUs and
   RDMA devices advertised on the node;
2. builds the operator, gateway and simulator images and loads them into the node
   (``testbed.images``);
3. installs the CRDs and the operator with the Helm chart;
4. applies ``examples/disaggdeployment-sim.yaml`` (simulated Llama-3.1-8B on simulated H100s
   with RDMA) and waits on its ``Ready`` condition;
5. sends chat requests through the gateway with the official ``openai`` client -- short and
   long prompts, streaming and not -- and prints where each went and its TTFT/ITL.

Everything heavy is cached under ``$DISAGG_CACHE`` (``~/.cache/disagg``), so a second run takes
minutes.  ``make demo-down`` removes the demo and stops the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.cluster.config import Settings
from testbed.operator_process import free_port

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "disaggdeployment-sim.yaml"
OPERATOR_NAMESPACE = "disagg-system"
DEMO_NAMESPACE = "disagg-demo"
RELEASE = "disagg"
NAME = "demo"
MODEL = "llama-3.1-8b"

SHORT_PROMPT = "What is disaggregated serving?"
LONG_PROMPT = (
    " ".join(
        f"Section {i}: prefill is compute-bound and decode is memory-bandwidth-bound, so a "
        "disaggregated system sizes and scales the two pools separately."
        for i in range(40)
    )
    + " Summarise the document above in one sentence."
)


def say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*cmd: str, check: bool = True, capture: bool = False, input: str | None = None) -> str:
    done = subprocess.run(
        cmd,
        check=False,
        text=True,
        input=input,
        capture_output=capture,
        cwd=REPO,
    )
    if check and done.returncode != 0:
        detail = (done.stderr or "").strip() if capture else ""
        sys.exit(f"demo: `{' '.join(cmd)}` failed ({done.returncode}) {detail}")
    return done.stdout or ""


@dataclass
class Tools:
    settings: Settings

    def kubectl(self, *args: str, capture: bool = True, check: bool = True) -> str:
        kubectl = str(self.settings.tool("kubectl"))
        return run(
            kubectl, f"--kubeconfig={self.settings.kubeconfig}", *args, capture=capture, check=check
        )

    def helm(self, *args: str) -> str:
        helm = str(self.settings.tool("helm"))
        return run(helm, f"--kubeconfig={self.settings.kubeconfig}", *args, capture=True)


def wait_ready(tools: Tools, timeout: float = 600) -> dict[str, Any]:
    """Poll the DisaggDeployment until its Ready condition is True; print changes."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        raw = tools.kubectl(
            "-n",
            DEMO_NAMESPACE,
            "get",
            f"disaggdeployments.disagg.dev/{NAME}",
            "-o",
            "json",
            check=False,
        )
        obj = json.loads(raw) if raw.strip() else {}
        conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        summary = ", ".join(
            f"{t}={conds[t]['status']}"
            for t in ("PrefillReady", "DecodeReady", "GatewayReady")
            if t in conds
        )
        if summary and summary != last:
            print(f"    {summary}", flush=True)
            last = summary
        if conds.get("Ready", {}).get("status") == "True":
            return obj
        if time.monotonic() > deadline:
            sys.exit(
                f"demo: {NAME} not Ready after {timeout:.0f}s: "
                f"{conds.get('Ready', {}).get('message', 'no status yet')}"
            )
        time.sleep(2)


@contextlib.contextmanager
def port_forward(tools: Tools) -> Iterator[str]:
    """The gateway Service on 127.0.0.1 (kubectl port-forward), for the duration."""
    port = free_port()
    kubectl = str(tools.settings.tool("kubectl"))
    proc = subprocess.Popen(
        [
            kubectl,
            f"--kubeconfig={tools.settings.kubeconfig}",
            "-n",
            DEMO_NAMESPACE,
            "port-forward",
            f"svc/{NAME}-gateway",
            f"{port}:8000",
            "--address",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None:
                sys.exit(f"demo: port-forward failed: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def short_worker(url: str | None) -> str:
    if not url:
        return "-"
    return url.split("//", 1)[-1]


def send_requests(base_url: str) -> list[dict[str, Any]]:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

    client = OpenAI(base_url=f"{base_url}/v1", api_key="demo", max_retries=0, timeout=120)
    cases = [
        ("short", SHORT_PROMPT, False),
        ("short", SHORT_PROMPT + " Answer briefly.", True),
        ("long", LONG_PROMPT, False),
        ("long", "Another document. " + LONG_PROMPT, True),
    ]
    rows = []
    for label, prompt, stream in cases:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
        start = time.perf_counter()
        if stream:
            streamed = client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=messages,
                max_tokens=32,
                stream=True,
                stream_options={"include_usage": True},
            )
            headers = streamed.headers
            stamps: list[float] = []
            prompt_tokens = 0
            for chunk in streamed.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    stamps.append(time.perf_counter())
                if chunk.usage:
                    prompt_tokens = chunk.usage.prompt_tokens
            ttft = (stamps[0] - start) if stamps else float("nan")
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            itl = sum(gaps) / len(gaps) if gaps else float("nan")
        else:
            whole = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=32
            )
            headers = whole.headers
            completion = whole.parse()
            ttft = time.perf_counter() - start
            itl = float("nan")
            prompt_tokens = completion.usage.prompt_tokens if completion.usage else 0
        rows.append(
            {
                "prompt": label,
                "stream": stream,
                "prompt_tokens": prompt_tokens,
                "route": headers.get("x-disagg-route", "?"),
                "prefill": short_worker(headers.get("x-disagg-prefill-worker")),
                "decode": short_worker(headers.get("x-disagg-decode-worker")),
                "reason": headers.get("x-disagg-route-reason", ""),
                "ttft_ms": ttft * 1000,
                "itl_ms": itl * 1000,
            }
        )
    return rows


def print_rows(rows: list[dict[str, Any]], pods: dict[str, str]) -> None:
    def pod(addr: str) -> str:
        return pods.get(addr.split(":")[0], addr)

    print(
        f"    {'prompt':<6} {'stream':<6} {'tokens':>6}  {'route':<14} {'prefill pod':<28} "
        f"{'decode pod':<28} {'TTFT ms':>8} {'ITL ms':>7}"
    )
    for r in rows:
        ttft = (
            "-" if r["stream"] is False and r["ttft_ms"] != r["ttft_ms"] else f"{r['ttft_ms']:.0f}"
        )
        itl = "-" if r["itl_ms"] != r["itl_ms"] else f"{r['itl_ms']:.1f}"
        print(
            f"    {r['prompt']:<6} {str(r['stream']).lower():<6} {r['prompt_tokens']:>6}  "
            f"{r['route']:<14} {pod(r['prefill']):<28} {pod(r['decode']):<28} {ttft:>8} {itl:>7}"
        )
        if r["reason"]:
            print(f"{'':>34}why: {r['reason']}")
    print("    (non-streaming TTFT is the whole request: the answer arrives at once)")


def up(tools: Tools) -> None:
    started = time.monotonic()
    say("1/5 Kubernetes: build (first run only: ~7 min on 2 cores) and start one node")
    run(sys.executable, "-m", "testbed.cluster", "up")
    say("2/5 images: operator, gateway, simulator (first run: ~2 min)")
    run(sys.executable, "-m", "testbed.images", "all")
    say("3/5 CRDs (kubectl apply -f crds/) and the operator (Helm chart)")
    # The CRDs go in with kubectl so that CRDs left by an earlier release (the chart keeps them
    # on uninstall) or by `kubectl apply` never block the install; the chart then skips them.
    print(tools.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds")))
    print(
        tools.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(REPO / "charts" / "disagg"),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            "image.tag=dev",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "crds.install=false",
            "--wait",
            "--timeout",
            "5m",
        )
        .strip()
        .splitlines()[0]
    )
    say(f"4/5 DisaggDeployment {NAME} ({EXAMPLE.relative_to(REPO)}) in namespace {DEMO_NAMESPACE}")
    tools.kubectl("create", "namespace", DEMO_NAMESPACE, check=False)
    print(tools.kubectl("-n", DEMO_NAMESPACE, "apply", "-f", str(EXAMPLE)).strip())
    wait_ready(tools)
    for part in ("prefill", "decode", "gateway"):  # a re-run may have rolled new pods
        tools.kubectl(
            "-n", DEMO_NAMESPACE, "rollout", "status", f"deployment/{NAME}-{part}", "--timeout=300s"
        )
    say("5/5 requests through the gateway (official openai client)")
    pods_json = json.loads(tools.kubectl("-n", DEMO_NAMESPACE, "get", "pods", "-o", "json"))
    pods = {p["status"].get("podIP", ""): p["metadata"]["name"] for p in pods_json["items"]}
    with port_forward(tools) as base_url:
        rows = send_requests(base_url)
    print_rows(rows, pods)
    print()
    print(
        tools.kubectl(
            "-n", DEMO_NAMESPACE, "get", "disaggdeployments.disagg.dev,inferencepools.disagg.dev"
        )
    )
    print(f"""Where to look next:
  kubeconfig        export KUBECONFIG={tools.settings.kubeconfig}
  status            kubectl -n {DEMO_NAMESPACE} describe disaggdeployments.disagg.dev {NAME}
  gateway metrics   kubectl -n {DEMO_NAMESPACE} port-forward svc/{NAME}-gateway 8000:8000
                    then http://127.0.0.1:8000/metrics (disagg_gateway_*)
  Prometheus        make monitoring-up (Prometheus + prometheus-adapter beside the cluster),
                    see docs/autoscaling.md
  Grafana           import charts/disagg/dashboards/disagg.json (also shipped in a ConfigMap
                    by the chart)
Demo finished in {time.monotonic() - started:.0f}s.  Tear down with: make demo-down""")


def down(tools: Tools) -> None:
    settings = tools.settings
    from testbed.cluster.lifecycle import is_up

    if is_up(settings):
        say("removing the demo")
        tools.kubectl(
            "delete", "namespace", DEMO_NAMESPACE, "--ignore-not-found", "--wait=true", check=False
        )
        tools.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--ignore-not-found")
    say("stopping the cluster")
    run(sys.executable, "-m", "testbed.cluster", "down")
    run(sys.executable, "-m", "testbed.images", "stop", check=False)
    print("Nothing of the demo is left running; caches stay in", settings.cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.demo",
        description="Run disagg end to end on a local cluster (see README).",
    )
    parser.add_argument(
        "command",
        choices=["up", "down", "requests"],
        help="up: everything; requests: only step 5; down: tear down",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("demo: the local cluster runs containers and networking: run as root")
    tools = Tools(Settings.from_env())
    if args.command == "up":
        up(tools)
    elif args.command == "down":
        down(tools)
    else:
        pods_json = json.loads(tools.kubectl("-n", DEMO_NAMESPACE, "get", "pods", "-o", "json"))
        pods = {p["status"].get("podIP", ""): p["metadata"]["name"] for p in pods_json["items"]}
        with port_forward(tools) as base_url:
            print_rows(send_requests(base_url), pods)
    return 0


if __name__ == "__main__":
    sys.exit(main())

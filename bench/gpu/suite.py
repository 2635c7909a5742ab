"""Call 2 of a GPU-tier run: real vLLM prefill and decode behind our gateway, faults, vllm-router.

    python -m bench.gpu.suite --engine vllm --out $OUT/suite.json --budget 510

With ``--engine sim`` the same suite runs against ``disagg sim`` (the CPU proof, docs/gpu.md).
Phases, each under its own time budget, each result written the moment it exists:

1. start the protocol engines (tiny model) from the operator's rendering, then the timing engines
   for call 3 in the background (they outlive this call);
2. the official ``openai`` client through our gateway: chat and completions, streamed and not,
   short and long prompts (48 requests), ``X-Disagg-Route`` per request, and the decode worker's
   ``vllm:prompt_tokens_by_source`` before and after;
3. vllm-router 0.1.17 in front of the same two engines, the same requests;
4. faults: the prefill worker killed under load; a decode worker killed mid-stream; the prefill
   worker restarted between the legs (its old ``kv_transfer_params`` sent to decode workers with
   ``kv_load_failure_policy`` ``recompute`` and ``fail``, directly and through the gateway);
   and a fresh P->D request after the restart.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.gpu import engines, services
from bench.gpu.engines import port
from bench.gpu.plans import by_name, protocol_engines, timing_engines
from bench.gpu.record import Budget, Phase, Results
from bench.gpu.replay import prompt_key
from bench.gpu.traffic import (
    MODEL,
    client,
    nixl_delta,
    openai_request,
    prompt_sources,
    prompt_text,
    scrape,
    total,
)

KINDS = [(kind, stream) for kind in ("completions", "chat") for stream in (False, True)]
SHORT_WORDS, LONG_WORDS, LOAD_WORDS = 8, 600, 1500
PREFILL_LEG = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


class Suite:
    def __init__(self, engine: str, results: Results, budget: Budget, seed: int = 12) -> None:
        self.engine, self.results, self.budget = engine, results, budget
        self.rng = random.Random(seed)
        self.plans = by_name(protocol_engines())
        self.services: list[services.Service] = []

    def url(self, name: str) -> str:
        return self.plans[name].url

    # -- 1. engines -----------------------------------------------------------------------------
    def start_engines(self, phase: Phase) -> None:
        for plan in self.plans.values():
            engines.start(plan, self.engine)
        ready = engines.wait_ready(self.plans, phase.left())
        self.results.put("protocol_engines", ready)
        started = {n: engines.recorded(n) for n in self.plans}
        self.results.put(
            "rendered",
            {
                n: {"argv": r.argv, "env": r.env, "vllmVersion": r.extra.get("vllmVersion")}
                for n, r in started.items()
                if r
            },
        )
        failed = [n for n, r in ready.items() if "error" in r]
        if failed:
            raise RuntimeError(f"protocol engines not ready: {failed}")

    def start_timing_engines(self, phase: Phase) -> None:
        """Launched now so that their start-up (~1-2 min each for an 8B with CUDA graphs)
        overlaps this call; call 3 waits for them."""
        for plan in timing_engines():
            engines.start(plan, self.engine)
        self.results.put("timing_engines_launched", [p.name for p in timing_engines()])

    # -- 2./3. traffic through a router ---------------------------------------------------------
    def traffic(self, name: str, base_url: str, per_kind: int, decode: str) -> dict[str, Any]:
        api = client(base_url)
        before = scrape(self.url(decode))
        requests = []
        for _ in range(per_kind):
            for kind, stream in KINDS:
                for long in (False, True):
                    words = LONG_WORDS if long else SHORT_WORDS
                    request = openai_request(api, kind, stream, prompt_text(self.rng, words))
                    request["long"] = long
                    requests.append(request)
        after = scrape(self.url(decode))
        summary = summarize(requests)
        summary["decode_prompt_tokens"] = prompt_sources(before, after)
        summary["decode_nixl"] = nixl_delta(before, after)
        summary["requests"] = requests
        self.results.put(name, summary)
        return summary

    def our_gateway(self, phase: Phase) -> None:
        gw = self.service(services.gateway("gateway", port(8000), [self.url("p")], [self.url("d")]))
        self.traffic("gateway", gw.url, per_kind=6, decode="d")

    def router(self, phase: Phase) -> None:
        router = self.service(
            services.vllm_router("vllm_router", port(8300), [self.url("p")], [self.url("d")])
        )
        self.traffic("vllm_router", router.url, per_kind=6, decode="d")

    def service(self, service: services.Service) -> services.Service:
        self.services.append(service)
        return service.wait_ready()

    # -- 4. faults ------------------------------------------------------------------------------
    def capture_prefill_answers(self, phase: Phase) -> None:
        """Prefill legs answered by the current prefill incarnation, kept for the restart case."""
        answers, bodies = {}, []
        for kind, _ in KINDS[::2]:
            for _ in range(6):
                prompt = prompt_text(self.rng, LONG_WORDS)
                body: dict[str, Any] = {
                    "model": MODEL,
                    "max_tokens": 1,
                    "stream": False,
                    "kv_transfer_params": dict(PREFILL_LEG),
                }
                if kind == "chat":
                    body["messages"] = [{"role": "user", "content": prompt}]
                    path = "/v1/chat/completions"
                else:
                    body["prompt"] = prompt
                    path = "/v1/completions"
                answer = post_json(self.url("p") + path, body)
                answers[prompt_key(body)] = answer
                bodies.append(
                    {
                        "kind": kind,
                        "prompt": prompt,
                        "path": path,
                        "params": answer.get("kv_transfer_params"),
                    }
                )
        self.stale = bodies
        self.answers_file = engines.ROOT / "stale-prefill-answers.json"
        self.answers_file.write_text(json.dumps(answers))
        self.results.put(
            "stale_capture", {"answers": len(answers), "example_params": bodies[0]["params"]}
        )

    def kill_prefill_under_load(self, phase: Phase) -> None:
        api = client(self.service_url("gateway"))
        prompts = [prompt_text(self.rng, LOAD_WORDS) for _ in range(24)]
        with cf.ThreadPoolExecutor(len(prompts)) as pool:
            futures = [
                pool.submit(openai_request, api, *KINDS[i % 4], prompt)
                for i, prompt in enumerate(prompts)
            ]
            busy = wait_busy(self.url("p"), 2.0)
            killed_at = time.perf_counter()
            killed = engines.kill("p")
            requests = [f.result() for f in futures]
        after = [
            openai_request(api, *KINDS[i % 4], prompt_text(self.rng, LONG_WORDS)) for i in range(8)
        ]
        for r in requests + after:
            r["long"] = True
        self.results.put(
            "fault_prefill_killed_under_load",
            {
                "killed": killed,
                "prefill_was_busy": busy,
                "during": summarize(requests),
                "after_while_down": summarize(after),
                "requests": requests + after,
            },
        )
        engines.start(self.plans["p"], self.engine)  # the restart: a new NIXL engine id
        self.p_restarted_at = killed_at

    def kill_decode_mid_stream(self, phase: Phase) -> None:
        gw = self.service(
            services.gateway("gateway_victim", port(8001), [], [self.url("d_victim")])
        )
        api = client(gw.url)
        tokens: dict[int, int] = {}
        streams = 8

        def one(i: int) -> dict[str, Any]:
            def seen(n: int) -> None:
                tokens[i] = n

            return openai_request(
                api,
                *KINDS[1 + 2 * (i % 2)],
                prompt_text(self.rng, 40),
                max_tokens=2000,
                on_token=seen,
            )

        with cf.ThreadPoolExecutor(streams) as pool:
            futures = [pool.submit(one, i) for i in range(streams)]
            end = time.time() + min(60.0, phase.left())
            while time.time() < end and (len(tokens) < streams or min(tokens.values()) < 16):
                time.sleep(0.02)
            killed = engines.kill("d_victim")
            requests = [f.result() for f in futures]
        self.results.put(
            "fault_decode_killed_mid_stream",
            {
                "killed": killed,
                "tokens_before_kill": dict(tokens),
                "explicit_error": sum(1 for r in requests if "error" in r),
                "silently_truncated": sum(
                    1 for r in requests if "error" not in r and r.get("finish_reason") is None
                ),
                "completed": sum(1 for r in requests if r["ok"]),
                "requests": requests,
            },
        )

    def wait_prefill_back(self, phase: Phase) -> None:
        ready = engines.wait_ready(["p"], phase.left())
        self.results.put("prefill_restart", ready)

    def stale_params_direct(self, phase: Phase) -> None:
        """The old incarnation's params straight to each decode policy (as vLLM sees them)."""
        rows = []
        for decode in ("d", "d_fail"):
            policy = "fail" if decode == "d_fail" else "recompute"
            before = scrape(self.url(decode))
            for index, stream in ((0, False), (1, True), (6, False), (7, True)):
                answer = raw_decode(self.url(decode), self.stale[index], stream)
                rows.append({"decode": decode, "policy": policy, **answer})
            after = scrape(self.url(decode))
            rows.append(
                {
                    "decode": decode,
                    "prompt_tokens": prompt_sources(before, after),
                    "nixl": nixl_delta(before, after),
                }
            )
        self.results.put("stale_params_direct", rows)

    def stale_params_through_gateway(self, phase: Phase) -> None:
        shim = self.service(services.replay("replay_prefill", port(8400), self.answers_file))
        out = {}
        for decode, number in (("d", 8002), ("d_fail", 8003)):
            gw = self.service(
                services.gateway(
                    f"gateway_stale_{decode}", port(number), [shim.url], [self.url(decode)]
                )
            )
            api = client(gw.url)
            before = scrape(self.url(decode))
            requests = []
            cases = [
                (2, False),
                (3, True),
                (4, False),
                (5, True),
                (8, False),
                (9, True),
                (10, False),
                (11, True),
            ]
            for index, stream in cases:
                item = self.stale[index]
                requests.append(
                    openai_request(api, item["kind"], stream, item["prompt"], greedy=True)
                )
                requests[-1]["long"] = True
            after = scrape(self.url(decode))
            # The reference: the same greedy requests straight to the decode worker, which
            # prefills them itself; a correct answer through the gateway is the same text.
            direct = client(self.url(decode))
            same = 0
            for request, (index, stream) in zip(requests, cases, strict=True):
                item = self.stale[index]
                reference = openai_request(
                    direct, item["kind"], stream, item["prompt"], greedy=True
                )
                request["reference_text"] = reference.get("text")
                request["matches_reference"] = bool(
                    request["ok"] and reference["ok"] and request.get("text") == reference["text"]
                )
                same += request["matches_reference"]
            out[decode] = {
                **summarize(requests),
                "requests": requests,
                "same_as_reference": same,
                "decode_prompt_tokens": prompt_sources(before, after),
                "decode_nixl": nixl_delta(before, after),
            }
        self.results.put("stale_params_through_gateway", out)

    def fresh_after_restart(self, phase: Phase) -> None:
        self.traffic("after_prefill_restart", self.service_url("gateway"), per_kind=1, decode="d")

    def service_url(self, name: str) -> str:
        return next(s.url for s in self.services if s.name == name)

    def finish(self, phase: Phase) -> None:
        for service in self.services:
            service.stop()
        for name in self.plans:
            engines.stop(name)
        self.results.put("log_tails", {n: engines.log_tail(n, 60) for n in self.plans})


def summarize(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts a reader checks: success per kind, routes, silent empty answers."""
    by_kind: dict[str, dict[str, int]] = {}
    routes: dict[str, int] = {}
    for r in requests:
        shape = ("stream" if r["stream"] else "whole", "long" if r.get("long") else "short")
        key = "/".join((r["kind"], *shape))
        cell = by_kind.setdefault(key, {"ok": 0, "n": 0})
        cell["n"] += 1
        cell["ok"] += int(r["ok"])
        routes[str(r.get("route"))] = routes.get(str(r.get("route")), 0) + 1
    long = [r for r in requests if r.get("long")]
    return {
        "n": len(requests),
        "ok": sum(int(r["ok"]) for r in requests),
        "silent_empty": sum(1 for r in requests if r.get("silent_empty")),
        "by_kind": by_kind,
        "routes": routes,
        "long_disaggregated": sum(1 for r in long if r.get("route") == "disaggregated"),
        "long": len(long),
    }


def post_json(url: str, body: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def raw_decode(base: str, item: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The decode leg with stale params, read byte for byte (what vLLM itself answers)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 16,
        "stream": stream,
        "ignore_eos": True,
        "kv_transfer_params": item["params"],
    }
    if item["kind"] == "chat":
        body["messages"] = [{"role": "user", "content": item["prompt"]}]
    else:
        body["prompt"] = item["prompt"]
    start = time.perf_counter()
    out: dict[str, Any] = {"kind": item["kind"], "stream": stream}
    request = urllib.request.Request(
        base + item["path"], json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            out["status"] = response.status
            text = response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        out["status"] = exc.code
        text = exc.read().decode(errors="replace")
    except OSError as exc:
        out["error"] = repr(exc)
        text = ""
    out["seconds"] = round(time.perf_counter() - start, 4)
    if stream:
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        parsed = [json.loads(e) for e in events if e.startswith("{")]
        choices = [c for p in parsed for c in p.get("choices") or []]
        out["done"] = bool(events) and events[-1] == "[DONE]"
        out["error_event"] = any("error" in p for p in parsed)
        out["text_events"] = sum(
            1 for c in choices if c.get("text") or (c.get("delta") or {}).get("content")
        )
        out["finish_reason"] = next(
            (c["finish_reason"] for c in reversed(choices) if c.get("finish_reason")), None
        )
    else:
        out["body"] = text[:300]
    return out


def wait_busy(base: str, timeout_s: float) -> bool:
    """True once the engine reports a running or waiting request (so a kill lands mid-load)."""
    end = time.time() + timeout_s
    while time.time() < end:
        samples = scrape(base, 1.0)
        load = total(samples, "vllm:num_requests_running") + total(
            samples, "vllm:num_requests_waiting"
        )
        if load > 0:
            return True
        time.sleep(0.01)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=["vllm", "sim"], default="vllm")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=510.0, help="seconds for the whole suite")
    parser.add_argument("--no-timing-engines", action="store_true")
    args = parser.parse_args(argv)
    results = Results(args.out)
    results.put("engine", args.engine)
    budget = Budget(args.budget, results)
    suite = Suite(args.engine, results, budget)
    # Budgets: engines 240 s at most; each later phase needs its share or is skipped.
    started = budget.run(
        "start_protocol_engines", 60, lambda p: suite.start_engines(p) or True, 240
    )
    if not started:
        budget.run("finish", 0, suite.finish)
        return 1
    if not args.no_timing_engines:
        budget.run("start_timing_engines", 10, suite.start_timing_engines, 30)
    budget.run("gateway_openai", 60, suite.our_gateway, 120)
    budget.run("vllm_router_openai", 60, suite.router, 120)
    budget.run("capture_prefill_answers", 20, suite.capture_prefill_answers, 30)
    budget.run("fault_prefill_killed_under_load", 40, suite.kill_prefill_under_load, 90)
    budget.run("fault_decode_killed_mid_stream", 30, suite.kill_decode_mid_stream, 90)
    budget.run("prefill_restarted", 20, suite.wait_prefill_back, 150)
    budget.run("stale_params_direct", 15, suite.stale_params_direct, 60)
    budget.run("stale_params_through_gateway", 20, suite.stale_params_through_gateway, 90)
    budget.run("fresh_after_restart", 15, suite.fresh_after_restart, 60)
    budget.run("finish", 0, suite.finish)
    return 0


if __name__ == "__main__":
    sys.exit(main())

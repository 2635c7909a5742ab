"""Several gateway replicas, rollouts and shutdowns, with real processes on loopback: replicas
agree on where a prompt prefix lives without sharing state, prefill and decode pair only within
one KV layout, and a gateway that is told to stop finishes what it started."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_procs import Proc, long_prompt, sim_requests, start_gateway, start_sims

FAST = ("--sim-speedup", "100")


@pytest.fixture(scope="module")
def decoders() -> Iterator[list[Proc]]:
    sims = start_sims(2, *FAST)
    yield sims
    for sim in sims:
        sim.stop()


def test_two_replicas_send_a_prefix_to_the_same_worker(decoders: list[Proc]) -> None:
    """Each replica keeps its own prefix index; the rendezvous hint makes them agree, so the
    second replica's request hits the prefix cache the first one filled."""
    urls = [d.url for d in decoders]
    # The claim is about an idle pool, so each replica reads the workers' load once, at start.
    # With the default 1 s scrape, a scrape can land while the other replica's request sits in
    # an engine's queue; that stale "1 waiting" is a real load signal, which by design outweighs
    # the hint (and made this test fail now and then on a busy machine).
    idle = {"scrapeIntervalSeconds": 3600}
    replicas = [start_gateway([], urls, config=idle), start_gateway([], urls, config=idle)]
    try:
        placed: dict[str, int] = {}
        for i in range(8):
            prompt = long_prompt(300, seed=f"conversation{i}")
            body = {"model": "m", "prompt": prompt, "max_tokens": 2}
            first = httpx.post(replicas[0].url + "/v1/completions", json=body)
            turn2 = {**body, "prompt": prompt + " and a follow-up question"}
            second = httpx.post(replicas[1].url + "/v1/completions", json=turn2)
            worker = first.headers["x-disagg-decode-worker"]
            assert second.headers["x-disagg-decode-worker"] == worker
            decoder = decoders[urls.index(worker)]
            (entry,) = sim_requests(decoder, second.headers["x-request-id"])
            assert entry["outcome"]["cached_tokens"] > 500  # the first turn's blocks
            placed[worker] = placed.get(worker, 0) + 1
        assert len(placed) == 2, placed  # and different conversations spread over workers
    finally:
        for gateway in replicas:
            gateway.stop()


def test_prefill_and_decode_pair_only_within_one_kv_layout() -> None:
    """Mid-rollout: an old and a new worker on each side (labels as the operator renders them);
    every disaggregated request pairs within one layout."""
    p_old, p_new, d_old, d_new = start_sims(4, *FAST)
    layout = {p_old.url: "old", d_old.url: "old", p_new.url: "new", d_new.url: "new"}

    def worker(proc: Proc) -> dict[str, object]:
        return {"url": proc.url, "kvLayout": layout[proc.url], "tensorParallel": 1}

    static = {"prefill": [worker(p_old), worker(p_new)], "decode": [worker(d_old), worker(d_new)]}
    config = {
        "discovery": {"static": static},
        "selective": {"minUncachedPromptTokens": 0},
        "routing": {"decode": {"scorers": [{"type": "round-robin"}]}},
    }
    gateway = start_gateway([], [], config=config)
    try:
        seen = set()
        for i in range(12):
            body = {"model": "m", "prompt": long_prompt(seed=f"rollout{i}"), "max_tokens": 2}
            reply = httpx.post(gateway.url + "/v1/completions", json=body, timeout=30)
            assert reply.status_code == 200
            assert reply.headers["x-disagg-route"] == "disaggregated"
            prefill = reply.headers["x-disagg-prefill-worker"]
            decode = reply.headers["x-disagg-decode-worker"]
            assert layout[prefill] == layout[decode] == reply.headers["x-disagg-kv-layout"]
            seen.add((prefill, decode))
        assert len(seen) == 2  # both layouts served
        p_new.stop()  # the new prefill worker goes away: new decode workers go decode-only
        deadline = time.monotonic() + 5
        while True:
            body = {"model": "m", "prompt": long_prompt(seed=f"alone{time.monotonic()}"),
                    "max_tokens": 2}  # fmt: skip
            reply = httpx.post(gateway.url + "/v1/completions", json=body, timeout=30)
            assert reply.status_code == 200
            decode = reply.headers["x-disagg-decode-worker"]
            if decode == d_new.url and reply.headers.get("x-disagg-prefill-worker") is None:
                break
            assert time.monotonic() < deadline
    finally:
        for proc in (gateway, p_old, p_new, d_old, d_new):
            proc.stop()


def test_a_stopping_gateway_drains_then_finishes_its_streams(decoders: list[Proc]) -> None:
    config = {"shutdown": {"delaySeconds": 1.5, "timeoutSeconds": 30}}
    slow = start_sims(1, "--sim-speedup", "1")[0]  # ~7 ms a token: a stream of seconds
    gateway = start_gateway([], [slow.url], config=config)
    try:
        events: list[str] = []
        body = {"model": "m", "prompt": "tell me a long story", "max_tokens": 400, "stream": True}

        def stream() -> None:
            with httpx.stream("POST", gateway.url + "/v1/completions", json=body, timeout=60) as r:
                events.extend(line for line in r.iter_lines() if line)

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 10
        while not sim_requests(slow):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        gateway.popen.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert httpx.get(gateway.url + "/ready").status_code == 503  # leaving the Service
        quick = {"model": "m", "prompt": "still there?", "max_tokens": 1}
        assert httpx.post(gateway.url + "/v1/completions", json=quick).status_code == 200
        time.sleep(1.8)  # the delay is over: no new connections
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/health", timeout=2)
        reader.join(30)
        assert events[-1] == "data: [DONE]" and len(events) == 401  # every token arrived
        assert all('"error"' not in e for e in events)
        gateway.popen.wait(10)  # and then it exits
    finally:
        gateway.stop()
        slow.stop()

"""The KV hand-off through a real gateway in front of real simulators running vLLM's default
``kv_load_failure_policy: fail`` (shared/real-vllm/FAULTS.md): a failed load is retried with a
local prefill, streamed and not; malformed params never reach a decode worker; a decode leg
that would start too late goes decode-only; a worker whose /health fails leaves rotation."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_procs import (
    Proc,
    clear,
    free_port,
    long_prompt,
    metric,
    set_faults,
    sim_requests,
    start_gateway,
    start_sim,
)

FAST = ("--sim-speedup", "100", "--sim-handshake-timeout", "0.5")
EVERYTHING_DISAGGREGATED = {"selective": {"minUncachedPromptTokens": 0}}


def sim_on(port: int, side_port: int) -> Proc:
    """A simulator on fixed ports, so that it can be restarted 'as the same pod'."""
    argv = [sys.executable, "-m", "disagg.cli", "sim", "--model", "m", "--host", "127.0.0.1",
            "--port", str(port), *FAST]  # fmt: skip
    env = {
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(side_port),
    }
    return Proc(f"sim-{port}", argv, port, "/health", env)


def completion(
    gateway: Proc, prompt: str, stream: bool, **extra: Any
) -> tuple[httpx.Response, str]:
    """One request; returns the response and the text the client assembled."""
    body = {"model": "m", "prompt": prompt, "max_tokens": 6, "stream": stream, **extra}
    reply = httpx.post(gateway.url + "/v1/completions", json=body, timeout=60)
    if not stream:
        return reply, reply.json()["choices"][0]["text"] if reply.status_code == 200 else ""
    text, finish = [], None
    for event in reply.text.split("\n\n"):
        if event.startswith("data: {"):
            payload = json.loads(event[6:])
            assert "error" not in payload, payload
            for choice in payload.get("choices") or []:
                text.append(choice.get("text") or "")
                finish = choice.get("finish_reason") or finish
    assert reply.text.endswith("data: [DONE]\n\n") and finish == "length", reply.text
    return reply, "".join(text)


@pytest.fixture(scope="module")
def reference() -> Iterator[Proc]:
    """An aggregated simulator: what the right answer to a prompt is."""
    sim = start_sim(*FAST)
    yield sim
    sim.stop()


def right_answer(reference: Proc, prompt: str) -> str:
    body = {"model": "m", "prompt": prompt, "max_tokens": 6}
    text: str = httpx.post(reference.url + "/v1/completions", json=body).json()["choices"][0][
        "text"
    ]
    return text


@pytest.mark.parametrize("stream", [False, True])
def test_a_prefill_restarted_between_the_legs_ends_in_a_right_answer(
    reference: Proc, stream: bool
) -> None:
    """Under ``fail`` the decode worker answers 500 (or, streamed, a silent empty 200); the
    gateway retries it decode-only and the client gets the right text, not an empty one."""
    port, side = free_port(), free_port()
    prefill = sim_on(port, side)
    decode = start_sim(*FAST)
    gateway = start_gateway([prefill.url], [decode.url], config=EVERYTHING_DISAGGREGATED)
    try:
        set_faults(decode, extra_latency_s=1.5)  # the decode leg waits: room for the restart
        prompt = long_prompt(seed=f"restart{stream}")
        result: dict[str, tuple[httpx.Response, str]] = {}
        client = threading.Thread(
            target=lambda: result.setdefault("r", completion(gateway, prompt, stream))
        )
        client.start()
        deadline = time.monotonic() + 10
        while not sim_requests(prefill):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        prefill.stop()  # between the legs: the prefill answered, the decode has not pulled yet
        prefill = sim_on(port, side)  # the same pod, restarted: a new NIXL engine id
        client.join(30)
        reply, text = result["r"]
        assert reply.status_code == 200
        assert text == right_answer(reference, prompt) and text
        assert reply.headers["x-disagg-route"] == "fallback"
        assert "could not load the prefilled KV" in reply.headers["x-disagg-route-reason"]
        attempts = sim_requests(decode, reply.headers["x-request-id"])
        assert [("kv_transfer_params" in a["body"]) for a in attempts] == [True, False]
        assert attempts[0]["outcome"]["status"] == 500  # what vLLM does under fail
        if stream:
            assert attempts[0]["outcome"].get("silent") is True  # the silent empty stream
        assert attempts[1]["outcome"]["prefill"] == "local"
        assert (
            metric(gateway, "disagg_gateway_kv_handoff_failures_total", reason="load_failed") == 1
        )
    finally:
        for proc in (gateway, prefill, decode):
            proc.stop()


@pytest.fixture(scope="module")
def pd() -> Iterator[dict[str, Proc]]:
    procs = {"p": start_sim(*FAST), "d": start_sim(*FAST)}
    side = httpx.get(procs["p"].url + "/sim/state").json()["side_channel_port"]
    static = {
        "prefill": [{"url": procs["p"].url, "sideChannelPort": side}],
        "decode": [procs["d"].url],
    }  # what pod discovery reads from the pod spec
    config = {**EVERYTHING_DISAGGREGATED, "discovery": {"static": static}}
    procs["gw"] = start_gateway([], [], config=config)
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.mark.parametrize(
    "corruption",
    ["no_remote_host", "fewer_blocks", "blocks_as_string", "empty_blocks", "wrong_host",
     "wrong_port"],
)  # fmt: skip
def test_malformed_params_never_reach_the_decode_worker(
    pd: dict[str, Proc], reference: Proc, corruption: str
) -> None:
    """Each of FAULTS.md's engine-killing shapes (and a wrong host or port): the decode worker
    gets the original body, prefills locally, and stays alive."""
    clear(pd["p"])
    clear(pd["d"])
    set_faults(pd["p"], corrupt_kv_params=corruption)
    before = metric(pd["gw"], "disagg_gateway_kv_handoff_failures_total", reason="invalid_params")
    prompt = long_prompt(seed=f"bad-{corruption}")
    reply, text = completion(pd["gw"], prompt, stream=False)
    assert reply.status_code == 200 and text == right_answer(reference, prompt)
    assert reply.headers["x-disagg-route"] == "fallback"
    assert "failed validation" in reply.headers["x-disagg-route-reason"]
    (seen,) = sim_requests(pd["d"], reply.headers["x-request-id"])
    assert "kv_transfer_params" not in seen["body"] and seen["outcome"]["prefill"] == "local"
    assert httpx.get(pd["d"].url + "/health").status_code == 200
    after = metric(pd["gw"], "disagg_gateway_kv_handoff_failures_total", reason="invalid_params")
    assert after == before + 1


def blackhole() -> tuple[socket.socket, list[socket.socket], int]:
    """A port whose connection attempts hang: a listener with a full accept queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    return listener, fillers, port


def test_a_decode_leg_that_would_start_after_the_lease_budget_goes_decode_only(
    reference: Proc,
) -> None:
    """The first decode worker's connect hangs (1 s) past the hand-off budget (0.3 s): the
    retry on the other decode worker does not carry the params, whose blocks may be gone."""
    listener, fillers, port = blackhole()
    prefill, decode = start_sim(*FAST), start_sim(*FAST)
    config = {
        **EVERYTHING_DISAGGREGATED,
        "kvTransfer": {"leaseSeconds": 3, "handoffBudgetSeconds": 0.3},
        "timeouts": {"connectSeconds": 1},
        # no health filter and a fixed rotation: the hanging worker is tried first in turn
        "routing": {"decode": {"scorers": [{"type": "round-robin"}], "filters": []}},
    }
    gateway = start_gateway([prefill.url], [f"http://127.0.0.1:{port}", decode.url], config=config)
    try:
        replies = [completion(gateway, long_prompt(seed=f"late{i}"), False) for i in range(2)]
        assert [r.status_code for r, _ in replies] == [200, 200]
        late = [r for r, _ in replies if "lease budget" in r.headers["x-disagg-route-reason"]]
        assert late and all(r.headers["x-disagg-route"] == "fallback" for r in late)
        for reply in late:
            (seen,) = sim_requests(decode, reply.headers["x-request-id"])
            assert "kv_transfer_params" not in seen["body"]
            assert seen["outcome"]["prefill"] == "local"
        failures = metric(
            gateway, "disagg_gateway_kv_handoff_failures_total", reason="lease_budget"
        )
        assert failures == len(late)
        for (reply, text), i in zip(replies, range(2), strict=True):
            assert text == right_answer(reference, long_prompt(seed=f"late{i}")), reply.headers
    finally:
        for proc in (gateway, prefill, decode):
            proc.stop()
        for sock in (*fillers, listener):
            sock.close()


def test_a_worker_whose_health_fails_leaves_rotation_whatever_its_metrics_say() -> None:
    d1, d2 = start_sim(*FAST), start_sim(*FAST)
    config = {"routing": {"decode": {"scorers": [{"type": "round-robin"}]}}}
    gateway = start_gateway([], [d1.url, d2.url], config=config)
    try:
        set_faults(d1, unhealthy=True)  # /health 503, /metrics 200: a dead engine in vLLM
        assert httpx.get(d1.url + "/metrics").status_code == 200
        deadline = time.monotonic() + 3
        while metric(gateway, "disagg_gateway_worker_healthy", pool="decode", role="decode",
                     worker=d1.url) != 0:  # fmt: skip
            assert time.monotonic() < deadline, "still in rotation after 3 s"
            time.sleep(0.05)
        for i in range(6):
            reply, _ = completion(gateway, f"short {i}", stream=False)
            assert reply.headers["x-disagg-decode-worker"] == d2.url
        set_faults(d1)
        deadline = time.monotonic() + 3
        while metric(gateway, "disagg_gateway_worker_healthy", pool="decode", role="decode",
                     worker=d1.url) != 1:  # fmt: skip
            assert time.monotonic() < deadline, "never came back"
            time.sleep(0.05)
    finally:
        for proc in (gateway, d1, d2):
            proc.stop()

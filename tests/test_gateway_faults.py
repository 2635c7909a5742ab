"""Every fallback path of the gateway, with failures injected into real simulator processes.

The gateway here routes both pools round-robin so that, over two requests, each worker is tried
first at least once whatever the rotation's phase -- a failing worker cannot hide behind luck.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_procs import (
    Proc,
    clear,
    long_prompt,
    metric,
    set_faults,
    sim_requests,
    start_gateway,
    start_sim,
    start_sims,
)

ROUND_ROBIN = {
    "routing": {
        "prefill": {"scorers": [{"type": "round-robin"}]},
        "decode": {"scorers": [{"type": "round-robin"}]},
    }
}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Proc]]:
    procs = dict(zip(("p1", "p2", "d1", "d2"), start_sims(4), strict=True))
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(scope="module")
def gateway(sims: dict[str, Proc]) -> Iterator[Proc]:
    gw = start_gateway(
        [sims["p1"].url, sims["p2"].url], [sims["d1"].url, sims["d2"].url], config=ROUND_ROBIN
    )
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def clean(sims: dict[str, Proc]) -> None:
    for sim in sims.values():
        clear(sim)


def _engine_id(sim: Proc) -> str:
    engine_id: str = httpx.get(sim.url + "/sim/state").json()["engine_id"]
    return engine_id


def _post(gateway: Proc, seed: str, **extra: Any) -> httpx.Response:
    body = {"model": "m", "prompt": long_prompt(seed=seed), "max_tokens": 4, **extra}
    return httpx.post(gateway.url + "/v1/completions", json=body, timeout=30)


def test_prefill_error_is_retried_on_another_prefill_worker(
    sims: dict[str, Proc], gateway: Proc
) -> None:
    set_faults(sims["p1"], error_rate=1.0)
    errors_before = metric(
        gateway, "disagg_gateway_upstream_errors_total", role="prefill", kind="status"
    )
    replies = [_post(gateway, f"retry{i}") for i in range(2)]
    assert [r.status_code for r in replies] == [200, 200]
    assert any(e["outcome"].get("injected") == "error" for e in sim_requests(sims["p1"]))
    good = _engine_id(sims["p2"])
    for reply in replies:
        rid = reply.headers["x-request-id"]
        (decode,) = [e for n in ("d1", "d2") for e in sim_requests(sims[n], rid)]
        assert decode["body"]["kv_transfer_params"]["remote_engine_id"] == good
        assert decode["outcome"]["prefill"] == "remote"
    errors_after = metric(
        gateway, "disagg_gateway_upstream_errors_total", role="prefill", kind="status"
    )
    assert errors_after > errors_before


def test_prefill_failing_everywhere_falls_back_to_decode_local_prefill(
    sims: dict[str, Proc], gateway: Proc
) -> None:
    for name in ("p1", "p2"):
        set_faults(sims[name], error_rate=1.0, error_status=503)
    before = metric(gateway, "disagg_gateway_routing_decisions_total", decision="fallback")
    body = {"model": "m", "prompt": long_prompt(seed="fallback"), "max_tokens": 3}
    reply = httpx.post(gateway.url + "/v1/completions", json=body, timeout=30)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
    rid = reply.headers["x-request-id"]
    assert len(sim_requests(sims["p1"], rid)) == len(sim_requests(sims["p2"], rid)) == 1
    (decode,) = [e for n in ("d1", "d2") for e in sim_requests(sims[n], rid)]
    assert decode["body"] == body  # the original body, no kv_transfer_params
    assert decode["outcome"]["prefill"] == "local"
    assert metric(gateway, "disagg_gateway_routing_decisions_total", decision="fallback") == (
        before + 1
    )


@pytest.mark.parametrize("stream", [False, True])
def test_a_decode_worker_error_before_output_is_retried_decode_only_elsewhere(
    sims: dict[str, Proc], gateway: Proc, stream: bool
) -> None:
    """A decode worker that answered 500 may have consumed (or failed to load) the prefilled
    KV: the retry on the other worker carries no kv_transfer_params and prefills locally."""
    set_faults(sims["d1"], error_rate=1.0)
    before = metric(gateway, "disagg_gateway_kv_handoff_failures_total", reason="load_failed")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    for i in range(2):
        prompt = long_prompt(seed=f"dfail{stream}{i}")
        if stream:
            chunks = list(
                client.completions.create(model="m", prompt=prompt, max_tokens=3, stream=True)
            )
            assert sum(1 for c in chunks if c.choices and c.choices[0].text) == 3
        else:
            out = client.completions.create(model="m", prompt=prompt, max_tokens=3)
            assert out.usage is not None and out.usage.completion_tokens == 3
    failed = sim_requests(sims["d1"])
    assert failed and all(e["outcome"].get("injected") == "error" for e in failed)
    assert all("kv_transfer_params" in e["body"] for e in failed)
    served = sim_requests(sims["d2"])
    retried = {e["x_request_id"] for e in failed} & {e["x_request_id"] for e in served}
    assert retried  # same request id on both legs
    for entry in served:
        if entry["x_request_id"] in retried:
            assert "kv_transfer_params" not in entry["body"]
            assert entry["outcome"]["prefill"] == "local"
    assert metric(
        gateway, "disagg_gateway_kv_handoff_failures_total", reason="load_failed"
    ) == before + len(retried)


def test_decode_dying_mid_stream_ends_with_an_error_frame(
    sims: dict[str, Proc], gateway: Proc
) -> None:
    for name in ("d1", "d2"):
        set_faults(sims[name], die_after_tokens=2)
    body = {"model": "m", "prompt": long_prompt(seed="die"), "max_tokens": 8, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line]
    assert len(events) == 4, events  # two tokens, the error frame, [DONE]
    assert all(e.startswith("data: {") for e in events[:2])
    assert events[2].startswith('data: {"error": {') and "mid-stream" in events[2]
    assert events[3] == "data: [DONE]"

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="mid-stream"):
        list(
            client.completions.create(
                model="m", prompt=long_prompt(seed="die2"), max_tokens=8, stream=True
            )
        )
    assert (
        metric(gateway, "disagg_gateway_upstream_errors_total", role="decode", kind="midstream")
        >= 2
    )


def test_killing_a_prefill_sim_mid_flight() -> None:
    *prefill, decode = start_sims(3)
    gateway = start_gateway([p.url for p in prefill], [decode.url], config=ROUND_ROBIN)
    try:
        for sim in prefill:
            set_faults(sim, extra_latency_s=30.0)  # the prefill hangs until we kill it
        result: dict[str, httpx.Response] = {}
        body = {"model": "m", "prompt": long_prompt(seed="kill"), "max_tokens": 3}
        worker = threading.Thread(
            target=lambda: result.setdefault(
                "reply", httpx.post(gateway.url + "/v1/completions", json=body, timeout=60)
            )
        )
        worker.start()
        victim = survivor = None
        for _ in range(200):  # until one prefill sim has the request
            hit = [p for p in prefill if sim_requests(p)]
            if hit:
                victim = hit[0]
                survivor = prefill[1 - prefill.index(victim)]
                break
            threading.Event().wait(0.02)
        assert victim is not None and survivor is not None
        set_faults(survivor)  # the retry must be fast
        victim.kill()
        worker.join(30)
        reply = result["reply"]
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
        rid = reply.headers["x-request-id"]
        assert sim_requests(survivor, rid)
        (decoded,) = sim_requests(decode, rid)
        assert decoded["outcome"]["prefill"] == "remote"
        # with one prefill worker dead, later requests keep succeeding
        for i in range(3):
            again = httpx.post(
                gateway.url + "/v1/completions",
                json={**body, "prompt": long_prompt(seed=f"after{i}")},
                timeout=30,
            )
            assert again.status_code == 200
        assert (
            metric(gateway, "disagg_gateway_upstream_errors_total", role="prefill", kind="protocol")
            + metric(
                gateway, "disagg_gateway_upstream_errors_total", role="prefill", kind="connect"
            )
            >= 1
        )
    finally:
        for proc in (gateway, *prefill, decode):
            proc.stop()


def test_queue_full_answers_429_with_retry_after() -> None:
    decode = start_sim()
    config = {
        "queue": {"decode": {"maxInflightPerWorker": 1, "maxQueued": 1}, "retryAfterSeconds": 2}
    }
    gateway = start_gateway([], [decode.url], config=config)
    try:
        # Long enough that the running request still holds its slot while the test sees
        # the queued one and sends a third, on a loaded machine too.
        set_faults(decode, extra_latency_s=3.0)
        replies: list[httpx.Response] = []
        body = {"model": "m", "prompt": "short", "max_tokens": 1}

        def call() -> None:
            replies.append(httpx.post(gateway.url + "/v1/completions", json=body, timeout=30))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(500):  # one runs, one waits in the queue
            if metric(gateway, "disagg_gateway_queue_depth", pool="decode", role="decode") == 1:
                break
            threading.Event().wait(0.02)
        else:
            pytest.fail("the queue never held a request")
        rejected = httpx.post(gateway.url + "/v1/completions", json=body, timeout=30)
        assert rejected.status_code == 429
        assert rejected.headers["retry-after"] == "2"
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        bad = httpx.post(
            gateway.url + "/v1/completions",
            json=body,
            headers={"X-Disagg-Priority": "urgent"},
            timeout=30,
        )
        assert bad.status_code == 400, bad.text  # refused before it could queue
        assert bad.json()["error"]["param"] == "X-Disagg-Priority"
        for t in threads:
            t.join(30)
        assert sorted(r.status_code for r in replies) == [200, 200]  # the queued one ran
        assert (
            metric(gateway, "disagg_gateway_rejected_requests_total", pool="decode", role="decode")
            == 1
        )
    finally:
        gateway.stop()
        decode.stop()

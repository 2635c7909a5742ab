"""Precise prefix routing with real processes: simulators publishing vLLM's KV events over ZMQ,
gateways subscribing to them, the model's (test) tokenizer on both sides.

"The index is correct" is checked the strongest way there is: for every worker, the gateway's
``/debug/kv-index`` fingerprint equals the fingerprint of the blocks the simulator's prefix
cache really holds (``/sim/state``), and the stream is synced.  Each fault -- a gateway replica
started late or restarted, a worker killed and restarted, a prefix-cache reset -- must end in
that state again, and every replica must reach the same one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testbed.tokenizer import write_tokenizer
from tests.gateway_procs import Proc, metric, start_gateway
from tests.kv_procs import EventSim, agrees, eventually, kv_index, precise_config

SYSTEM = " ".join(f"policy{i} kalomi ruto" for i in range(120))  # ~1,000 tokens


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def sims(tokenizer: Path) -> Iterator[list[EventSim]]:
    started = [EventSim("--sim-speedup", "50", tokenizer=tokenizer, wait=False) for _ in range(2)]
    try:
        for sim in started:
            sim.proc.wait_ready()
        yield started
    finally:
        for sim in started:
            sim.stop()


def _gateway(sims: list[EventSim], tokenizer: Path | None, **config: Any) -> Proc:
    cfg = precise_config(sims, tokenizer)
    cfg["routing"]["kvEvents"].update(config)
    return start_gateway([], [s.url for s in sims], config=cfg)


def _chat(gateway: Proc, user: str, system: str = SYSTEM) -> httpx.Response:
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "max_tokens": 20,
    }
    answer = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer


def test_requests_go_where_the_engine_caches_the_prefix(
    sims: list[EventSim], tokenizer: Path
) -> None:
    gateway = _gateway(sims, tokenizer)
    try:
        first = _chat(gateway, "first question")
        owner = first.headers["x-disagg-decode-worker"]
        eventually(lambda: agrees(gateway, sims), "index == the engines' caches")
        assert kv_index(gateway)["workers"][owner]["blocks"] > 50
        for i in range(4):
            answer = _chat(gateway, f"follow-up {i}")
            assert answer.headers["x-disagg-decode-worker"] == owner
            cached = answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached >= 1000  # the whole shared system prompt was a hit
        other = _chat(gateway, "unrelated", system="a different system prompt " * 80)
        eventually(lambda: agrees(gateway, sims), "index == caches after a second prefix")
        assert other.status_code == 200
        assert metric(gateway, "disagg_gateway_kv_hash_mismatches_total") == 0
    finally:
        gateway.stop()


def test_replicas_agree_and_a_restarted_replica_rebuilds_the_index(
    sims: list[EventSim], tokenizer: Path
) -> None:
    first = _gateway(sims, tokenizer)
    second: Proc | None = None
    try:
        for i in range(6):
            _chat(first, f"q{i}", system=f"tenant {i % 2} " + SYSTEM)
        eventually(lambda: agrees(first, sims), "replica 1 == caches")
        # A replica started after the traffic learns everything from the replay sockets.
        second = _gateway(sims, tokenizer)
        eventually(lambda: agrees(second, sims), "a late replica == caches")  # type: ignore[arg-type]
        # Restart replica 1: a new process, same state again.
        first.stop()
        first = _gateway(sims, tokenizer)
        eventually(lambda: agrees(first, sims), "a restarted replica == caches")
        _chat(second, "more traffic through the other replica")
        eventually(lambda: agrees(first, sims) and agrees(second, sims), "both == caches")
        one, two = kv_index(first)["workers"], kv_index(second)["workers"]
        assert {w: v["fingerprint"] for w, v in one.items()} == {
            w: v["fingerprint"] for w, v in two.items()
        }
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_prefix_cache_reset_empties_that_worker_in_the_index(
    sims: list[EventSim], tokenizer: Path
) -> None:
    gateway = _gateway(sims, tokenizer)
    try:
        for i in range(4):
            _chat(gateway, f"q{i}", system=f"group {i} " + SYSTEM)
        eventually(lambda: agrees(gateway, sims), "index == caches")
        busy = max(sims, key=lambda s: s.state()["kv_cached_blocks"])
        assert httpx.post(busy.url + "/reset_prefix_cache", timeout=5).status_code == 200
        assert busy.state()["kv_cached_blocks"] == 0
        eventually(
            lambda: kv_index(gateway)["workers"][busy.url]["blocks"] == 0 and agrees(gateway, sims),
            "the reset worker is empty in the index",
        )
        assert metric(gateway, "disagg_gateway_kv_event_resyncs_total", reason="reset") >= 1
    finally:
        gateway.stop()


def test_a_killed_worker_is_not_trusted_and_its_restart_is_rebuilt(
    sims: list[EventSim], tokenizer: Path
) -> None:
    gateway = _gateway(sims, tokenizer)
    try:
        for i in range(4):
            _chat(gateway, f"q{i}", system=f"group {i} " + SYSTEM)
        eventually(lambda: agrees(gateway, sims), "index == caches")
        victim = max(sims, key=lambda s: s.state()["kv_cached_blocks"])
        victim.proc.kill()  # SIGKILL: its cache is gone with it
        eventually(
            lambda: not kv_index(gateway)["workers"][victim.url]["synced"],
            "a dead worker's stream is no longer trusted",
        )
        victim.restart()  # a new engine on the same address, with an empty cache
        eventually(lambda: agrees(gateway, sims), "the new engine's (empty) cache")
        assert kv_index(gateway)["workers"][victim.url]["blocks"] == 0
        assert metric(gateway, "disagg_gateway_kv_event_resyncs_total", reason="restart") >= 1
        for i in range(4):
            _chat(gateway, f"again {i}", system=f"group {i} " + SYSTEM)
        eventually(lambda: agrees(gateway, sims), "index == caches after new traffic")
    finally:
        gateway.stop()


def test_a_worker_hashing_differently_falls_back_to_the_approximate_index(
    tokenizer: Path,
) -> None:
    odd = EventSim("--prefix-caching-hash-algo", "sha256_cbor", tokenizer=tokenizer)
    gateway = _gateway([odd], tokenizer)  # expects sha256
    try:
        _chat(gateway, "hello")
        eventually(
            lambda: metric(gateway, "disagg_gateway_kv_hash_mismatches_total") >= 1,
            "the mismatch is detected",
        )
        assert not kv_index(gateway)["workers"][odd.url]["synced"]
        assert _chat(gateway, "still served").status_code == 200
    finally:
        gateway.stop()
        odd.stop()

"""``disagg gateway --workers N``: N real gateway processes on one port, one set of metrics.

Real processes on 127.0.0.1: a simulator, the gateway's supervisor and its serving processes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from tests.gateway_procs import metric, start_gateway, start_sim

BODY = {"model": "m", "prompt": "hello there", "max_tokens": 2}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_share_the_port_and_answer_with_one_set_of_metrics() -> None:
    decode = start_sim()
    config = {"shutdown": {"delaySeconds": 0}}
    gateway = start_gateway([], [decode.url], "--workers", "2", config=config)
    try:
        serving = _children(gateway.popen.pid)
        assert len(serving) == 2 and all(_alive(p) for p in serving)
        for _ in range(12):  # a new connection each: the kernel spreads them over both
            reply = httpx.post(gateway.url + "/v1/completions", json=BODY, timeout=30)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-disagg-route"] == "decode_only"
        # whichever process answers /metrics, it counts every process's requests
        for _ in range(6):
            counted = metric(
                gateway, "disagg_gateway_requests_total", path="/v1/completions", status="200"
            )
            assert counted == 12
        assert metric(gateway, "disagg_gateway_ready_workers", pool="decode", role="decode") == 1
        gateway.popen.send_signal(signal.SIGTERM)
        assert gateway.popen.wait(20) == 0
        assert not any(_alive(p) for p in serving)
    finally:
        gateway.stop()
        decode.stop()


def test_a_serving_process_that_dies_takes_the_pod_down() -> None:
    decode = start_sim()
    gateway = start_gateway([], [decode.url], "--workers", "2")
    try:
        first, second = _children(gateway.popen.pid)
        os.kill(first, signal.SIGKILL)
        assert gateway.popen.wait(30) != 0  # the kubelet restarts the pod whole
        assert not _alive(second)
    finally:
        gateway.stop()
        decode.stop()


def test_workers_below_one_is_refused() -> None:
    from disagg.gateway.cli import main

    assert main(["--decode", "http://127.0.0.1:9", "--workers", "0"]) == 2

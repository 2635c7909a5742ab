"""The HTTP processes around the engines: our gateway, vllm-router, the replay shim.

Each is a child process of the call (unlike the engines, none must outlive it), on 127.0.0.1,
polled until its ready path answers, stopped by its own pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench.gpu.engines import LOGS, REPO, pythonpath


class ServiceError(RuntimeError):
    pass


class Service:
    def __init__(self, name: str, argv: list[str], port: int, ready_path: str) -> None:
        self.name, self.port, self.ready_path = name, port, ready_path
        self.url = f"http://127.0.0.1:{port}"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = LOGS / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": pythonpath(), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )

    def wait_ready(self, timeout_s: float = 60.0) -> Service:
        end = time.time() + timeout_s
        while time.time() < end:
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise ServiceError(f"{self.name} not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def gateway(
    name: str, port: int, prefill: Sequence[str], decode: Sequence[str], *extra: str
) -> Service:
    """``disagg gateway`` with static workers (the local form of the cluster's discovery)."""
    argv = [sys.executable, "-m", "disagg.cli", "gateway", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning"]
    for url in prefill:
        argv += ["--prefill", url]
    for url in decode:
        argv += ["--decode", url]
    return Service(name, [*argv, *extra], port, "/ready")


def vllm_router(name: str, port: int, prefill: Sequence[str], decode: Sequence[str]) -> Service:
    """vllm-router 0.1.17 in P/D mode: cache_aware for prefill as docs/benchmarks.md compares
    against; for decode power_of_two with two or more workers (it refuses to start with one),
    else round_robin."""
    decode_policy = "power_of_two" if len(decode) > 1 else "round_robin"
    argv = [sys.executable, "-m", "vllm_router.launch_router", "--vllm-pd-disaggregation"]
    argv += ["--prefill-policy", "cache_aware", "--decode-policy", decode_policy]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    argv += ["--request-timeout-secs", "120"]
    # Its metrics exporter binds a fixed default port otherwise: one more router on the
    # machine (a benchmark's) and this one dies at start.
    argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(port + 1)]
    for url in prefill:
        argv += ["--prefill", url]
    for url in decode:
        argv += ["--decode", url]
    return Service(name, argv, port, "/health")


def replay(name: str, port: int, answers: Path) -> Service:
    argv = [sys.executable, "-m", "bench.gpu.replay", "--port", str(port)]
    return Service(name, [*argv, "--answers", str(answers)], port, "/health")

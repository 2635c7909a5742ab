"""Real simulator and gateway processes on 127.0.0.1 for the gateway tests and benchmarks.

Each process gets a free port (and the sims a free NIXL side-channel port), is polled until its
health endpoint answers (no fixed sleeps), and is killed -- by its own pid -- on ``stop``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from disagg.sim.process import free_port as free_port  # re-exported: tests and benches use it

REPO = Path(__file__).resolve().parent.parent


class Proc:
    """A child process serving HTTP on ``port``; ``wait=False`` returns before it is ready."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        ready_path: str,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        wait: bool = True,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.timeout = timeout
        # The log must outlive this call: it is closed and removed by stop().
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"{name}-", suffix=".log", delete=False
        )
        self.popen = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> Proc:
        """Poll the ready path until it answers 200 (the process dying or the deadline fails)."""
        deadline = time.monotonic() + self.timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(self.url + self.ready_path, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {self.timeout}s")
            time.sleep(0.05)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crashed pod, no goodbye."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(5)

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def start_sims(count: int, *extra: str) -> list[Proc]:
    """``count`` sims started side by side (their start-ups overlap), all ready on return."""
    sims = [start_sim(*extra, wait=False) for _ in range(count)]
    try:
        return [sim.wait_ready() for sim in sims]
    except RuntimeError:
        for sim in sims:
            sim.stop()
        raise


def start_sim(
    *extra: str,
    model: str = "m",
    env: dict[str, str] | None = None,
    wait: bool = True,
    port: int | None = None,
) -> Proc:
    """A sim on ``port`` (a free one by default; a restarted worker reuses its old one)."""
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "disagg.cli",
        "sim",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    side = {
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(free_port()),
    }
    return Proc(f"sim-{port}", argv, port, "/health", {**side, **(env or {})}, wait=wait)


def start_gateway(
    prefill: Sequence[str],
    decode: Sequence[str],
    *extra: str,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "disagg.cli", "gateway", "--port", str(port)]
    for url in prefill:
        argv += ["--prefill", url]
    for url in decode:
        argv += ["--decode", url]
    if config is not None:
        path = Path(tempfile.mkstemp(prefix="gateway-", suffix=".json")[1])
        path.write_text(json.dumps(config))
        argv += ["--config", str(path)]
    return Proc(f"gateway-{port}", [*argv, *extra], port, "/ready", env)


def sim_requests(sim: Proc, request_id: str | None = None) -> list[dict[str, Any]]:
    params = {"x_request_id": request_id} if request_id else {}
    entries: list[dict[str, Any]] = httpx.get(sim.url + "/sim/requests", params=params).json()[
        "requests"
    ]
    return entries


def set_faults(sim: Proc, **faults: Any) -> None:
    if faults:
        httpx.post(sim.url + "/sim/faults", json=faults).raise_for_status()
    else:
        httpx.delete(sim.url + "/sim/faults").raise_for_status()


def clear(sim: Proc) -> None:
    set_faults(sim)
    httpx.delete(sim.url + "/sim/requests")
    httpx.post(sim.url + "/reset_prefix_cache")


def metric(gateway: Proc, name: str, **labels: str) -> float:
    """One sample's value from the gateway's /metrics (0 when absent); label order is free."""
    text = httpx.get(gateway.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        found, _, rest = series.partition("{")
        pairs = dict(
            (k, v.strip('"'))
            for k, _, v in (p.partition("=") for p in rest.rstrip("}").split(",") if p)
        )
        if found == name and pairs == labels:
            return float(value)
    return 0.0


def long_prompt(n_words: int = 600, *, seed: str) -> str:
    """A prompt of about ``2 * n_words`` tokens; tests give each its own ``seed`` because the
    gateway's prefix index outlives the sims' caches, which tests reset."""
    return " ".join(f"{seed}{i}" for i in range(n_words))

"""Run a simulator as a real child process, for tests, benchmarks and local demos.

``SimProcess`` starts ``python -m disagg.cli sim ...`` on a free loopback port, waits until
``GET /health`` answers 200 (polling, with a deadline; it fails fast with the log tail if the
process exits), and stops it -- terminate, then kill -- on exit.  The NIXL side channel gets a
free port too (``VLLM_NIXL_SIDE_CHANNEL_PORT=0``) unless the caller's ``env`` says otherwise, so
any number of simulators can run side by side::

    with SimProcess("--model", "m", "--sim-speedup", "100") as sim:
        httpx.get(sim.url + "/v1/models")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType

import httpx

_GIVEN: set[tuple[str, int]] = set()
"""Ports ``free_port`` handed out in this process: the kernel may offer a just-released port
again, so two ports asked for one after the other (a KV publisher's and its replay's) can come
out equal -- a sim's HTTP and side-channel ports once did in CI, and the second bind failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, and never one this process was given before."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if (host, port) not in _GIVEN:
            _GIVEN.add((host, port))
            return port


class SimProcess:
    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        startup_timeout_s: float = 20.0,
        python: str | None = None,
    ) -> None:
        self.args = list(args)
        self.python = python or sys.executable
        """The interpreter to run it with (the conformance tier's venv runs ours from .venv)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "VLLM_NIXL_SIDE_CHANNEL_PORT": "0", **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="disagg-sim-", suffix=".log", delete=False
        )

    def start(self) -> SimProcess:
        cmd = [self.python, "-m", "disagg.cli", "sim", *self.args]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulator exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"simulator not healthy after {self.startup_timeout_s}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        self._log.flush()
        with open(self._log.name, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

"""``disagg operator`` from this checkout as a real process against a cluster.

The e2e tier (``e2e/operator_process.py``: the session's operator, Prometheus switching)
and the scale benchmark (``bench/operator_scale.py``: CPU, RSS, request counters) both run
the operator this way; this is the part they share: free ports for its liveness and
metrics endpoints, start and stop, and reading what it reports about itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, and never one this process was given before: the kernel
    may offer a just-released port again, so two ports asked for one after the other (health,
    metrics) could come out equal.  The test bed's own copy of ``disagg.sim.process.free_port``
    (it imports nothing of the product)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    """Flags after the kubeconfig, liveness and metrics ones."""
    health_port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.health_port = self.health_port or free_port()
        self.metrics_port = self.metrics_port or free_port()

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "disagg.cli",
            "operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--liveness",
            f"http://127.0.0.1:{self.health_port}/healthz",
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}",
            *self.flags(),
        ]

    def flags(self) -> list[str]:
        """The flags after the kubeconfig, liveness and metrics ones."""
        return list(self.extra_args)

    def start(self) -> None:
        """Start it (not waiting for readiness: see ``health`` and ``metrics``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=REPO,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float] | None:
        """Its /metrics, live: ``{"name{labels}": value}`` (None: not answering)."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def health(self) -> dict[str, Any] | None:
        """Its /healthz (the ``controller`` probe: queue, reconciles, requests)."""
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU it has used so far (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mib(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MiB (Linux /proc)."""
        assert self.proc is not None
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

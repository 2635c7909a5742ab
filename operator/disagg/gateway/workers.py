"""Several gateway processes in one pod: one per core, sharing the port with SO_REUSEPORT.

One Python process runs one event loop on one core.  ``disagg gateway --workers N`` starts N
copies of itself (``--workers 1`` each, plus ``DISAGG_GATEWAY_REUSE_PORT``) that each bind the
same address with ``SO_REUSEPORT``; the kernel spreads incoming connections over them.  This
parent only supervises: it forwards SIGTERM/SIGINT (each child then drains as a lone gateway
would, see ``server``), and if one child dies it stops the others and exits with that child's
status, so the kubelet restarts the pod rather than run it short of a core.

What the processes do not share, and why that is sound: each follows discovery and scrapes the
workers itself, learns its own approximate prefix index (as separate gateway replicas do; the
rendezvous hint places an unseen prefix on the same worker in every process), subscribes to
the KV events itself (precise routing: every process's index equals the engines'), and admits
its share of each pool's limits -- ``queue.*`` in-flight requests and tokens per worker, and the
queue bounds, are divided among the processes (rounded up), so the pod keeps the configured
bounds.
Prometheus sees one pod: with ``PROMETHEUS_MULTIPROC_DIR`` (set here to a fresh directory) every
process writes its series to shared files and ``/metrics``, from any process, aggregates them --
counters and histograms summed, in-flight and queue gauges summed, health the worst seen.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType

REUSE_PORT_ENV = "DISAGG_GATEWAY_REUSE_PORT"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)
WORKER_SHARE_ENV = "DISAGG_GATEWAY_WORKER_SHARE"
"""How many processes share the pool limits (each admits its 1/N share)."""


def child_argv(argv: list[str]) -> list[str]:
    """``argv`` without ``--workers N`` / ``--workers=N``: a child runs one process."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out


def supervise(argv: list[str], count: int) -> int:
    """Run ``count`` gateway processes on one port until they exit; their exit status."""
    made_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="disagg-metrics-")
    env = {
        **os.environ,
        REUSE_PORT_ENV: "1",
        MULTIPROC_ENV: metrics_dir,
        WORKER_SHARE_ENV: str(count),
    }
    command = [sys.executable, "-m", "disagg.cli", "gateway", *child_argv(argv)]
    children = [
        subprocess.Popen(command, env=env, preexec_fn=_die_with_parent) for _ in range(count)
    ]

    def forward(sig: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    try:
        while children:
            for child in list(children):
                code = child.poll()
                if code is None:
                    continue
                children.remove(child)
                _forget(metrics_dir, child.pid)
                # uvicorn re-raises the SIGTERM/SIGINT it drained on: that exit is a clean one
                if code not in CLEAN_EXITS and status == 0:
                    status = code
                    forward(signal.SIGTERM, None)  # one gone: the pod restarts whole
            time.sleep(0.2)
    finally:
        if made_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the supervisor dies, however it dies."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _forget(metrics_dir: str, pid: int) -> None:
    """Drop an exited process's live gauges (its counters stay: they are totals)."""
    os.environ.setdefault(MULTIPROC_ENV, metrics_dir)
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]

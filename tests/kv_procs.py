"""Processes for precise-routing tests and benchmarks: simulators that publish KV events, and
gateways that follow them.

``EventSim`` is a ``disagg sim`` with ``--kv-events-config`` on two free loopback ports (bound on
every interface, as vLLM binds ``tcp://*``; only 127.0.0.1 is ever dialled) and, optionally, the
test tokenizer (``testbed.tokenizer``).  ``restart()`` starts a new process on the same ports: a
crashed and restarted pod.  ``precise_config`` is the gateway configuration that subscribes to a
list of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_procs import Proc, free_port, start_sim


class EventSim:
    def __init__(self, *extra: str, tokenizer: Path | None = None, wait: bool = True) -> None:
        self.pub_port, self.replay_port = free_port(), free_port()
        self.extra = list(extra)
        if tokenizer is not None:
            self.extra += ["--tokenizer", str(tokenizer)]
        self.proc: Proc = self._start(None, wait)

    def _start(self, port: int | None, wait: bool) -> Proc:
        config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{self.pub_port}",
            "replay_endpoint": f"tcp://*:{self.replay_port}",
            "topic": "kv@m",
        }
        args = ["--kv-events-config", json.dumps(config), *self.extra]
        return start_sim(*args, port=port, wait=wait)

    @property
    def url(self) -> str:
        return self.proc.url

    def endpoints(self) -> dict[str, str]:
        return {
            "publisher": f"tcp://127.0.0.1:{self.pub_port}",
            "replay": f"tcp://127.0.0.1:{self.replay_port}",
        }

    def restart(self) -> None:
        """Kill (SIGKILL) and start a new process on the same HTTP and event ports."""
        self.proc.kill()
        self.proc.stop()
        self.proc = self._start(self.proc.port, wait=True)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(self.url + "/sim/state", timeout=5).json()
        return state

    def fingerprint(self) -> str:
        return str(self.state()["kv_cached_fingerprint"])

    def stop(self) -> None:
        self.proc.stop()


def precise_config(
    sims: Sequence[EventSim],
    tokenizer: Path | None,
    extra_scorers: Sequence[dict[str, Any]] = (),
    weight: float = 2.0,
) -> dict[str, Any]:
    """A decode-only gateway routing by ``precise-prefix`` (and ``extra_scorers``) over these
    sims' events."""
    routing: dict[str, Any] = {
        "kvEvents": {"endpoints": {s.url: s.endpoints() for s in sims}},
        "decode": {"scorers": [{"type": "precise-prefix", "weight": weight}, *extra_scorers]},
    }
    if tokenizer is not None:
        routing["tokenizerPath"] = str(tokenizer)
    return {"routing": routing}


def kv_index(gateway: Proc) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(gateway.url + "/debug/kv-index", timeout=5).json()
    return state


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``check`` until it holds (events travel asynchronously); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def agrees(gateway: Proc, sims: Sequence[EventSim]) -> bool:
    """The gateway's index holds, for every sim, exactly the blocks the sim caches, and every
    stream is synced."""
    workers = kv_index(gateway)["workers"]
    return all(
        s.url in workers
        and workers[s.url]["synced"]
        and workers[s.url]["fingerprint"] == s.fingerprint()
        for s in sims
    )

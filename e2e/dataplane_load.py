"""Steady client load through a gateway for the data-path e2e tests, with every outcome counted.

Non-streamed clients count a request as ok only with a 200 and the tokens asked for; streamed
clients classify every stream: ``complete`` (tokens, a ``finish_reason``, ``[DONE]``),
``error_frame`` (an explicit ``data: {"error": ...}`` then ``[DONE]`` -- a stream the gateway
could not finish but said so), or ``silent`` (anything else: cut short, or empty -- the failure
that must never happen).  Each client opens a fresh connection per request, as a load balancer
in front of several gateway replicas would: a pooled connection would stick to one replica.
Outcomes are counted per *phase*, which the test moves through (``set_phase``).  Route headers
are kept, so a test can check where each request went.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcomes:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(phase, outcome) -> requests."""
    errors: list[str] = field(default_factory=list)
    routes: list[dict[str, str]] = field(default_factory=list)
    """The ``x-disagg-*`` headers of every answered request."""

    def total(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)


class GatewayLoad:
    def __init__(
        self,
        url: Callable[[], str],
        model: str,
        clients: int = 3,
        stream_clients: int = 2,
        words: int = 320,
        max_tokens: int = 8,
    ) -> None:
        """``url()`` names the gateway (a Service address) each time a request starts."""
        self.url, self.model = url, model
        self.clients, self.stream_clients = clients, stream_clients
        self.words, self.max_tokens = words, max_tokens
        self.outcomes = Outcomes()
        self.phase = "start"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent = 0

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def start(self) -> None:
        for i in range(self.clients + self.stream_clients):
            thread = threading.Thread(target=self._client, args=(i >= self.clients,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 120.0) -> Outcomes:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return self.outcomes

    def _record(
        self, phase: str, outcome: str, detail: str = "", route: dict[str, str] | None = None
    ) -> None:
        with self._lock:
            self.outcomes.counts[(phase, outcome)] += 1
            if detail and len(self.outcomes.errors) < 50:
                self.outcomes.errors.append(f"{phase}: {outcome}: {detail}")
            if route:
                self.outcomes.routes.append(route)

    def _prompt(self) -> str:
        with self._lock:
            self._sent += 1
            n = self._sent
        return f"request{n} " + " ".join(f"w{(n * 7 + i) % 89}" for i in range(self.words))

    def _client(self, streaming: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection every time
        with httpx.Client(timeout=120, limits=limits) as client:
            while not self._stop.is_set():
                phase = self.phase
                body = {"model": self.model, "prompt": self._prompt(),
                        "max_tokens": self.max_tokens, "stream": streaming}  # fmt: skip
                try:
                    if streaming:
                        self._one_stream(client, phase, body)
                    else:
                        self._one(client, phase, body)
                except httpx.HTTPError as exc:
                    self._record(phase, "failed", f"{type(exc).__name__}: {exc}")
                    time.sleep(0.2)

    def _one(self, client: httpx.Client, phase: str, body: dict[str, object]) -> None:
        reply = client.post(self.url() + "/v1/completions", json=body)
        route = {k: v for k, v in reply.headers.items() if k.startswith("x-disagg")}
        tokens = reply.json().get("usage", {}).get("completion_tokens") if reply.is_success else 0
        if reply.status_code == 200 and tokens == self.max_tokens:
            self._record(phase, "ok", route=route)
        else:
            self._record(phase, "failed", f"{reply.status_code} {reply.text[:200]}", route)

    def _one_stream(self, client: httpx.Client, phase: str, body: dict[str, object]) -> None:
        with client.stream("POST", self.url() + "/v1/completions", json=body) as reply:
            route = {k: v for k, v in reply.headers.items() if k.startswith("x-disagg")}
            if reply.status_code != 200:
                self._record(phase, "failed", f"stream {reply.status_code}", route)
                return
            events = [line for line in reply.iter_lines() if line]
        tokens = finish = error = 0
        for event in events:
            if not event.startswith("data: {"):
                continue
            payload = json.loads(event[6:])
            if "error" in payload:
                error += 1
            for choice in payload.get("choices") or []:
                tokens += bool(choice.get("text"))
                finish += choice.get("finish_reason") is not None
        done = bool(events) and events[-1] == "data: [DONE]"
        if done and error:
            self._record(phase, "error_frame", str(events[-2])[:200], route)
        elif done and tokens and finish:
            self._record(phase, "complete", route=route)
        else:
            self._record(phase, "silent", f"{len(events)} events, last {events[-1:]}", route)

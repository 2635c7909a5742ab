"""One client request's context as it moves through the gateway, and where it went.

``RequestContext`` is created when a request arrives and carries everything the legs share --
the validated request, its routing view, the ``Route`` it takes, its clock, the prefill's
validated ``kv_transfer_params`` -- so the prefill and decode code read one object instead of
threading eight parameters through every call.  ``Route`` is what the client learns in the
``X-Disagg-*`` headers of *every* response (errors included) and what the INFO line logs.

Header values never contain client input: reasons are fixed phrases and numbers, worker URLs
come from discovery.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from disagg.gateway.admission import Ticket
from disagg.gateway.requests import ClientRequest
from disagg.gateway.routing.contracts import Endpoint, RoutingRequest

_EXPLAIN = {
    "no_prefill_endpoint": "no prefill worker available: the decode worker prefilled itself",
    "no_compatible_prefill": (
        "no prefill worker shares the decode worker's KV layout: the decode worker prefilled itself"
    ),
    "prefill_failed": "prefill failed on every worker tried: the decode worker prefilled locally",
    "invalid_params": (
        "the prefill answer's kv_transfer_params failed validation: the decode worker prefilled "
        "locally"
    ),
    "lease_budget": (
        "the decode leg could not start within the prefill worker's KV lease budget: the decode "
        "worker prefilled locally"
    ),
    "load_failed": (
        "the decode worker could not load the prefilled KV: retried with a local prefill"
    ),
}


@dataclass
class Route:
    """Where one request went and why."""

    request_id: str
    decision: str = "none"
    """``disaggregated``, ``decode_only``, ``fallback``, or ``none`` (refused before routing)."""
    reason: str = "not_routed"
    uncached_tokens: int = 0
    threshold: int = 0
    prefill: str | None = None
    decode: str | None = None
    kv_layout: str | None = None

    def explain(self) -> str:
        if self.reason == "uncached_below_threshold":
            return (
                f"{self.uncached_tokens} uncached prompt tokens < "
                f"minUncachedPromptTokens {self.threshold}: decode worker prefills itself"
            )
        if self.reason == "uncached_above_threshold":
            return f"{self.uncached_tokens} uncached prompt tokens >= {self.threshold}"
        if self.reason == "not_routed":
            return "refused before routing"
        return _EXPLAIN.get(self.reason, self.reason.replace("_", " "))

    def fall_back(self, reason: str) -> None:
        """The decode worker prefills locally from now on (``reason`` says why)."""
        self.decision, self.reason = "fallback", reason

    def headers(self) -> dict[str, str]:
        out = {
            "X-Request-Id": self.request_id,
            "X-Disagg-Route": self.decision,
            "X-Disagg-Route-Reason": self.explain(),
        }
        if self.prefill:
            out["X-Disagg-Prefill-Worker"] = self.prefill
        if self.decode:
            out["X-Disagg-Decode-Worker"] = self.decode
        if self.kv_layout:
            out["X-Disagg-KV-Layout"] = self.kv_layout
        return out


@dataclass
class RequestContext:
    """Everything the legs of one request share."""

    request: ClientRequest
    routing: RoutingRequest
    route: Route
    arrival: float = field(default_factory=time.monotonic)
    decode_target: Endpoint | None = None
    """The decode worker the plan chose (the first decode attempt goes there)."""
    kv_params: dict[str, Any] | None = None
    """The prefill's validated ``kv_transfer_params``; None: the decode worker prefills."""
    prefill_done: float | None = None
    """When the prefill answered (monotonic): the KV lease started then."""
    prefill_endpoint: Endpoint | None = None
    """The prefill worker whose KV ``kv_params`` name (a retried decode leg must pair with it)."""
    tried_decode: set[str] = field(default_factory=set)
    ticket: Ticket = field(default_factory=Ticket)
    """The request's claim on the pools' slots: its class (priority, client) and size."""

    @property
    def headers(self) -> dict[str, str]:
        """Headers of both legs: the one request id, JSON."""
        return {"Content-Type": "application/json", "X-Request-Id": self.route.request_id}

    def drop_kv(self, reason: str) -> None:
        """Serve decode-only from now on: the params are not (or no longer) safe to use."""
        self.kv_params = None
        self.route.fall_back(reason)

    def handoff_age(self) -> float:
        return 0.0 if self.prefill_done is None else time.monotonic() - self.prefill_done

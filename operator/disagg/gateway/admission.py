"""Admission to one pool: limits from the engines' capacity, a fair and bounded wait, 429 beyond.

Why the gateway holds requests back at all: a request sent to a saturated vLLM worker waits in
that worker's own queue, where nobody can reorder it, move it to a new worker, or see it per pool
-- and the gateway's queue metric, the one the prefill autoscaler reads, stayed at 0 while
prefill workers queued 10 each (docs/autoscaling.md).  So a pool runs at most what its workers
batch: per ready worker ``max_inflight_per_worker`` requests and, when set,
``max_inflight_tokens_per_worker`` tokens (the renderer derives both from ``--max-num-seqs`` and
``--max-num-batched-tokens``).  A pool with nothing in flight admits any one request, however
large: vLLM chunks a prompt above its token budget, so size alone never gets a 429.

The wait is fair.  Waiters are grouped by class: a priority (the ``X-Disagg-Priority`` header:
``high``, ``normal``, ``low``) and a client (``X-Disagg-Client``, else the OpenAI ``user`` field).
A higher priority is always served first; within a priority clients take turns (round robin),
and each client's own requests are first come, first served -- one client with 100 requests
queued does not starve another with 1.  Only the next waiter in that order may take a slot: a
large prompt waiting for tokens is not overtaken by smaller ones (no starvation), at the price of
budget left idle meanwhile.

The wait is bounded: beyond ``max_queued`` waiters (or ``max_queued_per_client`` of one client), or
after ``max_wait_seconds``, the request is refused (``QueueFull``, HTTP 429) with a
``Retry-After`` estimated from the queue ahead and the slots' measured hold time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from disagg.gateway.config import PoolQueueConfig
from disagg.gateway.requests import BadRequest

#: Priority header values, most urgent first (a lower number is served first).
PRIORITIES: dict[str, int] = {"high": 0, "normal": 1, "low": 2}
#: Header naming the request's priority, and the one naming its client.
PRIORITY_HEADER = "x-disagg-priority"
CLIENT_HEADER = "x-disagg-client"
#: Longest client name kept (a longer one is cut: it is only a key, never logged or exported).
_CLIENT_CHARS = 256
#: Weight of the newest measurement in the hold-time average (Retry-After estimates).
_HOLD_EWMA = 0.2


class QueueFull(Exception):
    """The pool's queue is full or the wait was too long; the client should retry later."""

    def __init__(self, pool: str, role: str, reason: str, retry_after: int = 1) -> None:
        super().__init__(f"{role} pool {pool!r}: {reason}")
        self.pool = pool
        self.role = role
        self.retry_after = retry_after


@dataclass(eq=False)
class Ticket:
    """One request's claim on the pools; identity-hashed, so each request's is its own."""

    priority: int = PRIORITIES["normal"]
    client: str = ""
    prompt_tokens: int = 0
    max_tokens: int = 0
    """Tokens the request may generate (decode holds the KV of prompt plus output)."""


def ticket_for(headers: Mapping[str, str], body: Mapping[str, Any], prompt_tokens: int) -> Ticket:
    """A request's ticket from its headers and body; ``BadRequest`` (400) for a bad priority."""
    raw = headers.get(PRIORITY_HEADER)
    priority = PRIORITIES["normal"]
    if raw is not None:
        value = PRIORITIES.get(raw.strip().lower())
        if value is None:
            raise BadRequest(
                f"X-Disagg-Priority must be one of {', '.join(PRIORITIES)}",
                "X-Disagg-Priority",
                "invalid_priority",
            )
        priority = value
    client = headers.get(CLIENT_HEADER)
    if client is None and isinstance(body.get("user"), str):
        client = body["user"]
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    out = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else 0
    return Ticket(priority, (client or "")[:_CLIENT_CHARS], prompt_tokens, max(0, out))


@dataclass(eq=False)
class _Waiter:
    ticket: Ticket
    future: asyncio.Future[None]
    since: float = field(default_factory=time.monotonic)


class Admission:
    """Slots of one pool; ``cost`` says how many tokens of its budget a ticket takes."""

    def __init__(
        self,
        pool: str,
        role: str,
        limits: PoolQueueConfig,
        max_wait_seconds: float,
        cost: Callable[[Ticket], int],
        on_change: Callable[[], None] = lambda: None,
        gateways: int = 1,
    ) -> None:
        self.pool = pool
        self.role = role
        self.limits = limits
        self.max_wait_seconds = max_wait_seconds
        self.cost = cost
        self.on_change = on_change
        self.gateways = gateways
        """Gateway replicas sharing the workers: each admits its share of their batch."""
        self.on_refused: Callable[[], None] = lambda: None
        self.workers = 0
        self.admitted = 0
        self.admitted_tokens = 0
        self.mean_hold_seconds = 1.0
        self.last_wait_seconds = 0.0
        self._since: dict[Ticket, tuple[float, int]] = {}
        self._classes: dict[int, OrderedDict[str, deque[_Waiter]]] = {}
        self._per_client: dict[tuple[int, str], int] = {}
        self.queued = 0

    # -- capacity ---------------------------------------------------------------------------
    @property
    def max_inflight(self) -> int:
        return self.limits.max_inflight_per_worker * max(1, self.workers)

    @property
    def max_tokens(self) -> int | None:
        per_worker = self.limits.max_inflight_tokens_per_worker
        return None if per_worker is None else per_worker * max(1, self.workers)

    @property
    def busy_workers(self) -> float:
        """Workers' worth of admitted work: the fuller of the two budgets, in workers, as this
        gateway's share (summed over the gateway replicas it is the pool's)."""
        busy = self.admitted / self.limits.max_inflight_per_worker
        per_worker = self.limits.max_inflight_tokens_per_worker
        if per_worker is not None:
            busy = max(busy, self.admitted_tokens / per_worker)
        return busy / self.gateways

    def _fits(self, ticket: Ticket) -> bool:
        if self.admitted == 0:
            return True  # one request always runs, however large (vLLM chunks it)
        if self.admitted >= self.max_inflight:
            return False
        budget = self.max_tokens
        return budget is None or self.admitted_tokens + self.cost(ticket) <= budget

    def retry_after(self) -> int:
        """Seconds until the queue ahead has likely drained: waiters times hold time per slot."""
        seconds = (self.queued + 1) * self.mean_hold_seconds / self.max_inflight
        return max(1, min(60, math.ceil(seconds)))

    # -- the wait ---------------------------------------------------------------------------
    def check(self, ticket: Ticket) -> str | None:
        """Why ``ticket`` would be refused right now (None: it would run or wait)."""
        if self.queued >= self.limits.max_queued:
            return f"{self.queued} requests already queued"
        per_client = self.limits.max_queued_per_client
        if per_client is not None and self._per_client.get(self._key(ticket), 0) >= per_client:
            return f"this client already has {per_client} requests queued"
        return None

    async def admit(self, ticket: Ticket) -> float:
        """Wait for a slot; returns the seconds waited, or raises ``QueueFull``."""
        start = time.monotonic()
        if not self.queued and self._fits(ticket):
            self._take(ticket)
            return 0.0
        reason = self.check(ticket)
        if reason is not None:
            self.on_refused()
            raise QueueFull(self.pool, self.role, reason, self.retry_after())
        waiter = _Waiter(ticket, asyncio.get_running_loop().create_future())
        self._enqueue(waiter)
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.max_wait_seconds)
        except TimeoutError:
            if self._forget(waiter):
                self.release(ticket)  # the slot arrived just as we gave up; hand it on
            self.on_refused()
            raise QueueFull(
                self.pool,
                self.role,
                f"waited {self.max_wait_seconds:.0f}s for a slot",
                self.retry_after(),
            ) from None
        except asyncio.CancelledError:
            if self._forget(waiter):
                self.release(ticket)
            raise
        self.last_wait_seconds = time.monotonic() - start
        return self.last_wait_seconds

    def release(self, ticket: Ticket) -> None:
        """Give the ticket's slot back (a second release of the same ticket does nothing)."""
        held = self._since.pop(ticket, None)
        if held is None:
            return
        since, tokens = held
        self.admitted -= 1
        self.admitted_tokens -= tokens
        hold = time.monotonic() - since
        self.mean_hold_seconds += _HOLD_EWMA * (hold - self.mean_hold_seconds)
        self._wake()

    def set_workers(self, count: int) -> None:
        self.workers = count
        self._wake()

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _key(ticket: Ticket) -> tuple[int, str]:
        return ticket.priority, ticket.client

    def _take(self, ticket: Ticket) -> None:
        tokens = self.cost(ticket)
        self._since[ticket] = (time.monotonic(), tokens)
        self.admitted += 1
        self.admitted_tokens += tokens
        self.on_change()

    def _enqueue(self, waiter: _Waiter) -> None:
        ticket = waiter.ticket
        clients = self._classes.setdefault(ticket.priority, OrderedDict())
        clients.setdefault(ticket.client, deque()).append(waiter)
        key = self._key(ticket)
        self._per_client[key] = self._per_client.get(key, 0) + 1
        self.queued += 1

    def _dequeue(self, waiter: _Waiter) -> None:
        ticket = waiter.ticket
        clients = self._classes[ticket.priority]
        queue = clients[ticket.client]
        queue.remove(waiter)
        if not queue:
            del clients[ticket.client]
        if not clients:
            del self._classes[ticket.priority]
        key = self._key(ticket)
        self._per_client[key] -= 1
        if not self._per_client[key]:
            del self._per_client[key]
        self.queued -= 1

    def _forget(self, waiter: _Waiter) -> bool:
        """Take a giving-up waiter out of the queue; True if it had been granted a slot."""
        granted = waiter.future.done() and not waiter.future.cancelled()
        if not waiter.future.done():
            waiter.future.cancel()
            self._dequeue(waiter)
            self.on_change()
        return granted

    def _head(self) -> _Waiter | None:
        """The next waiter: the most urgent priority, its first client in turn, that client's
        oldest request."""
        if not self._classes:
            return None
        clients = self._classes[min(self._classes)]
        return next(iter(clients.values()))[0]

    def _wake(self) -> None:
        while (waiter := self._head()) is not None and self._fits(waiter.ticket):
            self._dequeue(waiter)
            clients = self._classes.get(waiter.ticket.priority)
            if clients is not None and waiter.ticket.client in clients:
                clients.move_to_end(waiter.ticket.client)  # the next client's turn
            self._take(waiter.ticket)
            waiter.future.set_result(None)
        self.on_change()

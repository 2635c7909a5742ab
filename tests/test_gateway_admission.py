"""The gateway's admission controller: who gets a slot next, and when a request is refused.

Table-free on purpose: each test drives one ``Admission`` with real asyncio waiters and reads the
order in which they were granted, the way requests would leave the gateway's queue.
"""

from __future__ import annotations

import asyncio

import pytest

from disagg.gateway.admission import PRIORITIES, Admission, QueueFull, Ticket, ticket_for
from disagg.gateway.config import PoolQueueConfig
from disagg.gateway.requests import BadRequest

HIGH, NORMAL, LOW = PRIORITIES["high"], PRIORITIES["normal"], PRIORITIES["low"]


def admission(
    inflight: int = 1,
    tokens: int | None = None,
    queued: int = 100,
    per_client: int | None = None,
    wait: float = 5.0,
) -> Admission:
    limits = PoolQueueConfig(
        max_inflight_per_worker=inflight,
        max_inflight_tokens_per_worker=tokens,
        max_queued=queued,
        max_queued_per_client=per_client,
    )
    gate = Admission("p", "prefill", limits, wait, lambda t: t.prompt_tokens)
    gate.set_workers(1)
    return gate


async def queue_up(
    gate: Admission, tickets: list[Ticket], order: list[Ticket]
) -> list[asyncio.Task[None]]:
    """Each ticket waits in arrival order; ``order`` records when each is granted."""

    async def one(ticket: Ticket) -> None:
        await gate.admit(ticket)
        order.append(ticket)

    tasks = []
    for ticket in tickets:
        tasks.append(asyncio.create_task(one(ticket)))
        await asyncio.sleep(0)  # arrival order is queue order
    await asyncio.sleep(0)
    return tasks


async def drain(gate: Admission, order: list[Ticket], count: int) -> None:
    """Release whoever holds a slot, one at a time, until ``count`` have been granted."""
    while len(order) < count:
        await asyncio.sleep(0)
        if order:
            gate.release(order[-1])
        await asyncio.sleep(0)


async def test_clients_take_turns_and_each_clients_requests_stay_in_order() -> None:
    gate = admission()
    holder = Ticket(client="x")
    await gate.admit(holder)
    a = [Ticket(client="a", prompt_tokens=i) for i in range(3)]
    b = [Ticket(client="b")]
    order: list[Ticket] = []
    tasks = await queue_up(gate, [*a, *b], order)
    assert gate.queued == 4 and order == []
    gate.release(holder)
    await drain(gate, order, 4)
    await asyncio.gather(*tasks)
    # a's first, then b's (its turn, though it came last), then a's others in their order
    assert order == [a[0], b[0], a[1], a[2]]


async def test_a_higher_priority_is_served_first_whatever_its_arrival() -> None:
    gate = admission()
    holder = Ticket()
    await gate.admit(holder)
    low, normal, high = Ticket(LOW, "l"), Ticket(NORMAL, "n"), Ticket(HIGH, "h")
    order: list[Ticket] = []
    tasks = await queue_up(gate, [low, normal, high], order)
    gate.release(holder)
    await drain(gate, order, 3)
    await asyncio.gather(*tasks)
    assert order == [high, normal, low]


async def test_queue_length_and_per_client_bounds_refuse_with_a_reason() -> None:
    gate = admission(queued=2, per_client=1)
    await gate.admit(Ticket(client="x"))
    order: list[Ticket] = []
    tasks = await queue_up(gate, [Ticket(client="a")], order)
    with pytest.raises(QueueFull, match="this client already has 1 requests queued"):
        await gate.admit(Ticket(client="a"))
    tasks += await queue_up(gate, [Ticket(client="b")], order)
    with pytest.raises(QueueFull, match="2 requests already queued") as refused:
        await gate.admit(Ticket(client="c"))
    assert refused.value.retry_after >= 1
    assert gate.queued == 2  # the refused ones left nothing behind
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.queued == 0 and gate.admitted == 1


async def test_a_wait_past_the_bound_is_refused_and_leaves_the_queue() -> None:
    gate = admission(wait=0.05)
    holder = Ticket()
    await gate.admit(holder)
    with pytest.raises(QueueFull, match="waited 0s for a slot"):
        await gate.admit(Ticket(client="late"))
    assert gate.queued == 0 and gate.admitted == 1
    gate.release(holder)
    gate.release(holder)  # a second release of one ticket changes nothing
    assert gate.admitted == 0


async def test_token_budget_holds_back_a_large_prompt_without_letting_smaller_ones_pass() -> None:
    gate = admission(inflight=8, tokens=1000)
    first = Ticket(client="a", prompt_tokens=600)
    await gate.admit(first)
    big, small = Ticket(client="b", prompt_tokens=900), Ticket(client="c", prompt_tokens=100)
    order: list[Ticket] = []
    tasks = await queue_up(gate, [big, small], order)
    # small would fit (700 <= 1000) but big is ahead of it: nobody overtakes
    assert order == [] and gate.queued == 2
    gate.release(first)
    await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [big, small] and gate.admitted_tokens == 1000
    assert gate.busy_workers == 1.0


async def test_an_idle_pool_admits_a_prompt_larger_than_its_budget() -> None:
    gate = admission(tokens=100)
    huge = Ticket(prompt_tokens=10_000)
    assert await gate.admit(huge) == 0.0
    assert gate.busy_workers == 100.0  # far beyond one worker's budget: the pool is saturated


async def test_a_new_worker_lets_waiters_in() -> None:
    gate = admission(inflight=1)
    await gate.admit(Ticket())
    order: list[Ticket] = []
    waiting = Ticket(client="w")
    tasks = await queue_up(gate, [waiting], order)
    assert order == []
    gate.set_workers(2)
    await asyncio.gather(*tasks)
    assert order == [waiting] and gate.queued == 0


async def test_retry_after_grows_with_the_queue_ahead() -> None:
    gate = admission(inflight=1)
    gate.mean_hold_seconds = 2.0
    holder = Ticket()
    await gate.admit(holder)
    assert gate.retry_after() == 2
    order: list[Ticket] = []
    tasks = await queue_up(gate, [Ticket(client=str(i)) for i in range(10)], order)
    assert gate.retry_after() == 22
    gate.mean_hold_seconds = 100.0
    assert gate.retry_after() == 60  # capped
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_ticket_reads_priority_and_client_and_refuses_an_unknown_priority() -> None:
    ticket = ticket_for({"x-disagg-priority": " High "}, {"user": "u", "max_tokens": 7}, 12)
    assert (ticket.priority, ticket.client, ticket.prompt_tokens, ticket.max_tokens) == (
        HIGH,
        "u",
        12,
        7,
    )
    assert ticket_for({"x-disagg-client": "hdr"}, {"user": "u"}, 0).client == "hdr"
    assert ticket_for({}, {"max_tokens": True, "user": ["x"]}, 0).max_tokens == 0
    with pytest.raises(BadRequest, match="X-Disagg-Priority must be one of high, normal, low"):
        ticket_for({"x-disagg-priority": "urgent!"}, {}, 0)

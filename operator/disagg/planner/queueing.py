"""Queueing arithmetic for TTFT tails: Erlang C (M/M/c) waiting-time percentiles.

A pool of ``c`` identical replicas serving Poisson arrivals is the textbook M/M/c queue, and its
waiting-time tail has a closed form: ``P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t)`` where
``C`` is the Erlang C probability of waiting.  Exponential service times overstate the variance
of prefill (whose time is nearly a function of prompt length), so the tail is conservative --
the right direction for sizing.  Erlang B's recurrence keeps it stable for thousands of servers.
"""

from __future__ import annotations

import math


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability an arrival waits, for ``servers`` servers and ``offered_load`` = lambda x
    mean service time (Erlangs).  1.0 when the queue is unstable (load >= servers)."""
    if servers < 1:
        raise ValueError("servers must be >= 1")
    if offered_load <= 0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return servers * blocking / (servers - offered_load * (1 - blocking))


def wait_percentile_s(
    servers: int, arrival_rate: float, service_s: float, percentile: float = 0.99
) -> float:
    """Queueing delay (before service starts) not exceeded by ``percentile`` of arrivals;
    ``inf`` when the queue is unstable."""
    if not 0 < percentile < 1:
        raise ValueError("percentile must be in (0, 1)")
    if arrival_rate <= 0 or service_s <= 0:
        return 0.0
    load = arrival_rate * service_s
    if load >= servers:
        return math.inf
    waits = erlang_c(servers, load)
    tail = 1 - percentile
    if waits <= tail:
        return 0.0
    return math.log(waits / tail) / (servers / service_s - arrival_rate)

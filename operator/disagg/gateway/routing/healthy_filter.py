"""Healthy filter: drop endpoints marked unhealthy (failed scrape or connection error).

If every candidate is unhealthy it returns them all rather than none: the marks may be stale
(a worker restarted since the last scrape) and trying is better than refusing.  Parameters: none.
"""

from __future__ import annotations

from collections.abc import Sequence

from disagg.gateway.routing.contracts import Endpoint, RoutingRequest


class HealthyFilter:
    def filter(self, request: RoutingRequest, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        healthy = [e for e in endpoints if e.healthy]
        return healthy if healthy else list(endpoints)

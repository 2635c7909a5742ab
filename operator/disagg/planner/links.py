"""KV links: the fabric model for real networks, and measured profiles for links that are not.

A P->D KV transfer on a real fabric (RDMA: InfiniBand, RoCE, EFA) moves at close to line rate,
so the planner and the simulator time it as bytes over ``link_gbps`` (:func:`transfer_time_s` of
:mod:`disagg.planner.roofline`): that is the ``fabric`` profile, the default.  Some links are
nothing like a fabric -- the lent GPU VM's UCX has no RDMA device and moves KV between two
processes by TCP emulation over loopback -- and modelling them as a slow fabric would hide what
they are.  Those get a named profile of their own, fitted from NIXL's own transfer times
(``bench/gpu/link_fit.py``): a fixed latency per transfer plus bytes at a measured
bandwidth, whatever ``link_gbps`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

from disagg.planner.errors import UnknownPresetError
from disagg.planner.roofline import transfer_time_s

MiB = 1 << 20


@dataclass(frozen=True)
class LinkProfile:
    name: str
    description: str
    latency_s: float = 0.0
    """Fixed seconds per transfer (handshake, notifications)."""
    bandwidth_bytes_s: float = 0.0
    """Measured bytes per second; 0: the fabric's line rate (``link_gbps``)."""

    def transfer_s(self, num_bytes: float, link_gbps: float) -> float:
        if not self.bandwidth_bytes_s:
            return self.latency_s + transfer_time_s(num_bytes, link_gbps)
        return self.latency_s + num_bytes / self.bandwidth_bytes_s


FABRIC = LinkProfile("fabric", "a real fabric (RDMA): bytes at the link's line rate")
#: NIXL over UCX on the lent H200 VM (2026-12-01): no RDMA device, both engines on one GPU, UCX
#: picks `tcp/lo` (software emulation).  Fitted on the 512- and 8192-token transfers of
#: docs/gpu-runs/2026-12-01 (64 and 1024 MiB), checked on the 2048-token one.
UCX_TCP_EMULATION = LinkProfile(
    "ucx-tcp-emulation",
    "NIXL/UCX by TCP emulation over loopback, as measured on the lent H200 VM",
    latency_s=5.2e-3,
    bandwidth_bytes_s=342.6 * MiB,
)
LINKS = {p.name: p for p in (FABRIC, UCX_TCP_EMULATION)}


def get_link(name: str) -> LinkProfile:
    try:
        return LINKS[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(LINKS))
        raise UnknownPresetError(f"unknown link profile {name!r}; known: {known}") from None

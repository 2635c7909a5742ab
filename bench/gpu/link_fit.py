"""The measured KV-link profile of the lent VM, from NIXL's own transfer times.

The VM's UCX has no RDMA device and moves KV by TCP emulation over loopback, so its transfers
are modelled as measured -- a fixed latency plus bytes at a measured bandwidth -- under their
own name (``disagg.planner.links.UCX_TCP_EMULATION``), never as a fabric.  A straight line
through two transfers (``FIT``), checked on the third (``CHECK``).
"""

from __future__ import annotations

from typing import Any

#: NIXL transfers the profile is fitted on (prompt tokens), and checked on.
FIT, CHECK = ("512", "8192"), ("2048",)


def link_fit(results: dict[str, Any]) -> dict[str, Any]:
    """NIXL's own transfer times on the real side as latency + bytes / bandwidth: a straight
    line through the ``FIT`` transfers, checked on ``CHECK``."""
    rows = ((results.get("real") or {}).get("handoff") or {}).get("p8/d8") or {}

    def point(length: str) -> tuple[float, float] | None:
        nixl = (rows.get(length) or {}).get("nixl") or {}
        if not nixl.get("transfers") or not nixl.get("xfer_ms_mean"):
            return None
        return nixl["bytes"] / nixl["transfers"], nixl["xfer_ms_mean"] / 1e3

    fit = [p for p in map(point, FIT) if p]
    if len(fit) < 2:
        return {}
    (b0, t0), (b1, t1) = fit[0], fit[-1]
    bandwidth = (b1 - b0) / (t1 - t0)
    latency = t0 - b0 / bandwidth
    checks = []
    for length in CHECK:
        found = point(length)
        if found:
            predicted = latency + found[0] / bandwidth
            checks.append({
                "tokens": int(length), "measured_ms": found[1] * 1e3,
                "predicted_ms": predicted * 1e3, "error": predicted / found[1] - 1,
            })  # fmt: skip
    return {"latency_s": latency, "bandwidth_bytes_s": bandwidth, "checks": checks}

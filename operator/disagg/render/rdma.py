"""RDMA expansion: what a worker pod needs for NIXL/UCX to use the fabric.

One ``rdma`` block becomes: the device-plugin resource in requests and limits,
``IPC_LOCK`` (UCX pins memory for registration), the Multus network annotation,
and UCX variables chosen by transport (VLLM.md).  NCCL variables are set too
because tensor parallelism inside the pod uses the same HCAs.  With RDMA off the
pod gets nothing of this: NIXL then runs over TCP, and the operator's status says
so rather than hiding the 10-40x TTFT cost.
"""

from __future__ import annotations

from typing import Any

from disagg.api.common import RDMASpec

MULTUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"

_UCX_TLS = {
    "ib": "rc_x,rc,dc_x,dc,cuda_copy,cuda_ipc",
    "roce": "rc_x,rc,dc_x,dc,cuda_copy,cuda_ipc",
    "efa": "srd,cuda_copy,tcp",
    "tcp": "cuda_ipc,cuda_copy,tcp",
}


def rdma_resources(rdma: RDMASpec) -> dict[str, int]:
    """Extended resources to add to the worker's requests and limits."""
    if not rdma.enabled or not rdma.resource_name:
        return {}
    return {rdma.resource_name: rdma.count}


def rdma_env(rdma: RDMASpec) -> list[dict[str, str]]:
    """UCX/NCCL environment for the transport."""
    if not rdma.enabled:
        return []
    env = [
        {"name": "UCX_TLS", "value": _UCX_TLS[rdma.transport]},
        {"name": "UCX_NET_DEVICES", "value": ",".join(rdma.hcas) if rdma.hcas else "all"},
    ]
    if rdma.transport in ("ib", "roce"):
        env += [
            {"name": "UCX_RNDV_SCHEME", "value": "get_zcopy"},
            {"name": "UCX_RNDV_THRESH", "value": "0"},
        ]
    if rdma.gid_index is not None:
        env += [
            {"name": "UCX_IB_GID_INDEX", "value": str(rdma.gid_index)},
            {"name": "NCCL_IB_GID_INDEX", "value": str(rdma.gid_index)},
        ]
    if rdma.hcas:
        hcas = ",".join(h.split(":", 1)[0] for h in rdma.hcas)
        env.append({"name": "NCCL_IB_HCA", "value": hcas})
    return env


def rdma_capabilities(rdma: RDMASpec) -> list[str]:
    """Linux capabilities the worker container adds (only ever ``IPC_LOCK``, only with RDMA)."""
    return ["IPC_LOCK"] if rdma.enabled else []


def rdma_annotations(rdma: RDMASpec) -> dict[str, Any]:
    """Pod annotations: the Multus secondary networks."""
    if not rdma.enabled or not rdma.networks:
        return {}
    return {MULTUS_ANNOTATION: ",".join(rdma.networks)}

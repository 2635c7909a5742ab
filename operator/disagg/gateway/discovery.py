"""Where the workers are and what they are: a static list, or the pools' Pods followed live.

A ``Discovery`` runs for the gateway's lifetime and reports each pool's current workers through a
callback, as ``WorkerInfo``: the URL, plus what pairing and ``kv_transfer_params`` checks need --
the KV-layout hash and tensor-parallel size the operator labels pods with, the NIXL side-channel
port the pod declares, and an *incarnation* that changes when the pod restarts (a restarted vLLM
has a new NIXL engine id).  ``StaticDiscovery`` reports once (local use, tests, benchmarks).

``PodDiscovery`` lists and then watches the pools' Pods by label selector through
``KubeApiClient`` (plain HTTPS with the service-account token).  Pods, not EndpointSlices: a
slice does not carry the pod's labels, and pairing needs them.  A pod counts while it is Ready,
has an IP and is not being deleted -- the same rule an EndpointSlice applies -- so a pod that
starts draining stops receiving new requests at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from disagg.gateway.config import KubernetesDiscovery, StaticWorker
from disagg.gateway.upstream import KubeApiClient, UpstreamError

log = logging.getLogger(__name__)

Role = Literal["prefill", "decode"]

LABEL_KV_LAYOUT = "disagg.dev/kv-layout"
LABEL_TENSOR_PARALLEL = "disagg.dev/tensor-parallel"
SIDE_CHANNEL_PORT_NAME = "kv-side-channel"


@dataclass(frozen=True)
class WorkerInfo:
    url: str
    kv_layout: str | None = None
    tensor_parallel: int | None = None
    side_channel_port: int | None = None
    incarnation: str = ""
    """Changes when the worker process restarts (pod uid and restart count)."""

    @property
    def host(self) -> str:
        rest = self.url.split("://", 1)[-1]
        if rest.startswith("["):
            return rest[1 : rest.index("]")]
        return rest.split(":", 1)[0].split("/", 1)[0]


OnChange = Callable[[Role, list[WorkerInfo]], None]


class Discovery(Protocol):
    async def run(self, on_change: OnChange) -> None:
        """Report every change of a pool's workers; runs until cancelled."""
        ...


def _static(entry: str | StaticWorker) -> WorkerInfo:
    if isinstance(entry, str):
        return WorkerInfo(entry.rstrip("/"))
    return WorkerInfo(
        entry.url.rstrip("/"), entry.kv_layout, entry.tensor_parallel, entry.side_channel_port
    )


class StaticDiscovery:
    def __init__(
        self, prefill: Iterable[str | StaticWorker], decode: Iterable[str | StaticWorker]
    ) -> None:
        self.prefill = [_static(e) for e in prefill]
        self.decode = [_static(e) for e in decode]

    async def run(self, on_change: OnChange) -> None:
        on_change("prefill", list(self.prefill))
        on_change("decode", list(self.decode))


def _int_label(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def worker_of(
    pod: Mapping[str, Any], default_port: int, port_name: str | None
) -> WorkerInfo | None:
    """The worker a Pod serves as, or None while it is not routable (not Ready, no IP, or
    being deleted: a draining pod gets no new requests)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or meta.get("deletionTimestamp"):
        return None
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("Ready") != "True":
        return None
    port, side = default_port, None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if port_name is not None and p.get("name") == port_name and p.get("containerPort"):
                port = int(p["containerPort"])
            if p.get("name") == SIDE_CHANNEL_PORT_NAME and p.get("containerPort"):
                side = int(p["containerPort"])
    labels = meta.get("labels") or {}
    restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or [])
    host = f"[{ip}]" if ":" in ip else ip
    return WorkerInfo(
        url=f"http://{host}:{port}",
        kv_layout=labels.get(LABEL_KV_LAYOUT),
        tensor_parallel=_int_label(labels.get(LABEL_TENSOR_PARALLEL)),
        side_channel_port=side,
        incarnation=f"{meta.get('uid', '')}/{restarts}",
    )


def ready_workers(
    pods: Iterable[Mapping[str, Any]], default_port: int, port_name: str | None = None
) -> list[WorkerInfo]:
    workers = (worker_of(p, default_port, port_name) for p in pods)
    return sorted((w for w in workers if w is not None), key=lambda w: w.url)


class PodDiscovery:
    """List + watch the Pods of both pools (two concurrent loops)."""

    def __init__(self, config: KubernetesDiscovery, api: KubeApiClient) -> None:
        self.config = config
        self.api = api

    async def run(self, on_change: OnChange) -> None:
        loops = [self._follow("decode", self.config.decode_selector, on_change)]
        if self.config.prefill_selector:
            loops.append(self._follow("prefill", self.config.prefill_selector, on_change))
        else:
            on_change("prefill", [])
        await asyncio.gather(*loops)

    async def _follow(self, role: Role, selector: str, on_change: OnChange) -> None:
        path = f"/api/v1/namespaces/{self.config.namespace}/pods"
        backoff = 1.0
        last: list[WorkerInfo] | None = None
        while True:
            try:
                listing = await self.api.get_json(path, {"labelSelector": selector})
                pods: dict[str, Mapping[str, Any]] = {
                    item["metadata"]["name"]: item for item in listing.get("items", [])
                }
                last = self._report(role, pods, last, on_change)
                version = str(listing.get("metadata", {}).get("resourceVersion", ""))
                backoff = 1.0
                params = {
                    "labelSelector": selector,
                    "watch": "true",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(int(self.config.resync_seconds)),
                }
                async for line in self.api.watch_lines(path, params, self.config.resync_seconds):
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":  # e.g. 410 Gone: the version is too old; relist
                        break
                    name = obj.get("metadata", {}).get("name")
                    if kind in ("ADDED", "MODIFIED") and name:
                        pods[name] = obj
                    elif kind == "DELETED" and name:
                        pods.pop(name, None)
                    else:
                        continue
                    last = self._report(role, pods, last, on_change)
                await asyncio.sleep(0.5)  # the watch ended (timeout or error): relist, calmly
            except asyncio.CancelledError:
                raise
            except (UpstreamError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "discovery of %s pool failed: %s; retrying in %.0fs", role, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _report(
        self,
        role: Role,
        pods: Mapping[str, Mapping[str, Any]],
        last: list[WorkerInfo] | None,
        on_change: OnChange,
    ) -> list[WorkerInfo]:
        workers = ready_workers(pods.values(), self.config.port, self.config.port_name)
        if workers != last:
            log.info("%s pool: %d ready worker(s)", role, len(workers))
            on_change(role, workers)
        return workers

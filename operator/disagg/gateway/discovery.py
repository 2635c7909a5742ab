"""Where the workers are: a static list, or the pools' EndpointSlices followed live.

A ``Discovery`` runs for the gateway's lifetime and reports each pool's current set of worker
URLs through a callback; the pools add and drop workers from it.  ``StaticDiscovery`` reports
once (local use, tests, benchmarks).  ``EndpointSliceDiscovery`` lists and then watches
EndpointSlices by label selector through ``KubeApiClient`` (plain HTTPS with the service-account
token -- the gateway does not import the ``kubernetes`` package); a broken or expired watch is
followed by a fresh list.  Only endpoints that are ready and not terminating count, so a pod being
scaled down stops receiving new requests as soon as it starts draining.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

from disagg.gateway.config import KubernetesDiscovery
from disagg.gateway.upstream import KubeApiClient, UpstreamError

log = logging.getLogger(__name__)

Role = Literal["prefill", "decode"]
OnChange = Callable[[Role, list[str]], None]


class Discovery(Protocol):
    async def run(self, on_change: OnChange) -> None:
        """Report every change of a pool's worker URLs; runs until cancelled."""
        ...


class StaticDiscovery:
    def __init__(self, prefill: Iterable[str], decode: Iterable[str]) -> None:
        self.prefill = [u.rstrip("/") for u in prefill]
        self.decode = [u.rstrip("/") for u in decode]

    async def run(self, on_change: OnChange) -> None:
        on_change("prefill", list(self.prefill))
        on_change("decode", list(self.decode))


def _port_of(slice_: Mapping[str, Any], default_port: int, port_name: str | None) -> int:
    ports = slice_.get("ports") or []
    if port_name is not None:
        for port in ports:
            if port.get("name") == port_name and port.get("port"):
                return int(port["port"])
    for port in ports:
        if port.get("port") == default_port:
            return default_port
    return default_port


def ready_urls(
    slices: Iterable[Mapping[str, Any]], default_port: int, port_name: str | None = None
) -> list[str]:
    """Worker URLs of the ready, non-terminating endpoints of these EndpointSlices (sorted).

    Per the EndpointSlice API, an unset ``ready`` condition means ready; ``serving`` without
    ``ready`` is a terminating pod still finishing work -- not routable for new requests.
    """
    urls: set[str] = set()
    for slice_ in slices:
        port = _port_of(slice_, default_port, port_name)
        for endpoint in slice_.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                urls.add(f"http://{host}:{port}")
    return sorted(urls)


class EndpointSliceDiscovery:
    """List + watch EndpointSlices of both pools (two concurrent loops)."""

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
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self.config.namespace}/endpointslices"
        backoff = 1.0
        last: list[str] | None = None
        while True:
            try:
                listing = await self.api.get_json(path, {"labelSelector": selector})
                slices: dict[str, Mapping[str, Any]] = {
                    item["metadata"]["name"]: item for item in listing.get("items", [])
                }
                last = self._report(role, slices, last, on_change)
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
                        slices[name] = obj
                    elif kind == "DELETED" and name:
                        slices.pop(name, None)
                    else:
                        continue
                    last = self._report(role, slices, last, on_change)
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
        slices: Mapping[str, Mapping[str, Any]],
        last: list[str] | None,
        on_change: OnChange,
    ) -> list[str]:
        urls = ready_urls(slices.values(), self.config.port, self.config.port_name)
        if urls != last:
            log.info("%s pool: %d ready worker(s)", role, len(urls))
            on_change(role, urls)
        return urls

"""The ONE module that imports an HTTP client: the gateway's long-lived clients and errors.

Two clients, both created once per process: ``UpstreamClient`` talks to the vLLM workers,
``KubeApiClient`` to the Kubernetes API server (EndpointSlice discovery) with the pod's
service-account token and CA.  Everything else in the gateway sees plain bytes, status codes and
``UpstreamError`` -- switching HTTP client is a change to this file only, and it was made once:
the worker path runs on aiohttp because, measured (bench/gateway_bench.py, py-spy), httpx spent
77% of the gateway's CPU per request, 29% in its connection pool's per-request scan of every
pooled socket; aiohttp's pool does not scan.  The API-server client stays on httpx (a handful of
requests a minute, and its transport injection makes discovery testable without a server).

Why the settings: a 5 s default timeout would kill long generations, so the worker client has a
connect timeout, a per-call deadline for the non-streaming legs, and for streams only an
idle-read timeout (no total).  vLLM closes idle keep-alive connections after 5 s; a pooled
connection reused just as the server closes it fails the request, so ours expire sooner
(``keep_alive_expiry_seconds`` < 5).  Responses are never decompressed or re-encoded: streams are
relayed byte for byte and workers are asked not to compress.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import httpx

ErrorKind = Literal["connect", "timeout", "status", "protocol"]


class UpstreamError(Exception):
    """A worker (or the API server) could not give a usable answer.

    ``kind``: ``connect`` (refused, unreachable), ``timeout``, ``status`` (an HTTP error status;
    ``status`` and ``body`` are set) or ``protocol`` (the connection broke mid-answer or the
    answer was not what the protocol promises).
    """

    def __init__(
        self, kind: ErrorKind, message: str, status: int | None = None, body: bytes = b""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body


def _translate_aiohttp(exc: BaseException, url: str) -> UpstreamError:
    # A connect that timed out never delivered the request: the worker did not see it.
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return UpstreamError("connect", f"{url}: cannot connect ({type(exc).__name__}: {exc})")
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", f"{url}: timed out ({type(exc).__name__})")
    return UpstreamError("protocol", f"{url}: {type(exc).__name__}: {exc}")


def _translate(exc: httpx.HTTPError, url: str) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError("timeout", f"{url}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("connect", f"{url}: cannot connect ({exc})")
    return UpstreamError("protocol", f"{url}: {type(exc).__name__}: {exc}")


_CLIENT_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    """Case-insensitive."""
    body: bytes


class Stream:
    """An open streaming response: status and headers now, the raw body bytes as they come."""

    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body bytes as the worker sent them (no decoding, no re-framing)."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _CLIENT_ERRORS as exc:
            raise _translate_aiohttp(exc, self._url) from exc

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _CLIENT_ERRORS as exc:
            raise _translate_aiohttp(exc, self._url) from exc

    async def aclose(self) -> None:
        """Return the connection to the pool if the body was read, else close it."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class UpstreamClient:
    """One pooled HTTP client for every worker of both pools (created in the running loop)."""

    def __init__(
        self,
        connect_seconds: float = 5.0,
        stream_idle_seconds: float = 300.0,
        keep_alive_expiry_seconds: float = 4.0,
    ) -> None:
        self._connect = connect_seconds
        self._idle = stream_idle_seconds
        self._keep_alive = keep_alive_expiry_seconds
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=self._keep_alive, ttl_dns_cache=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                headers={"Accept-Encoding": "identity"},
                trust_env=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect, sock_read=self._idle
                ),
            )
        return self._session

    def _deadline(self, total: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=min(self._connect, total))

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], deadline_seconds: float
    ) -> Response:
        """POST and read the whole answer; HTTP error statuses are returned, not raised."""
        try:
            async with self._client().post(
                url, data=body, headers=dict(headers), timeout=self._deadline(deadline_seconds)
            ) as response:
                content = await response.read()
                return Response(response.status, response.headers, content)
        except _CLIENT_ERRORS as exc:
            raise _translate_aiohttp(exc, url) from exc

    async def open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], first_byte_seconds: float
    ) -> Stream:
        """POST and return once the response headers are in; the body is read via ``Stream``.

        ``first_byte_seconds`` bounds each wait for data; there is no total deadline: a
        generation may run for many minutes.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect, sock_read=max(first_byte_seconds, self._idle)
        )
        try:
            response = await self._client().post(
                url, data=body, headers=dict(headers), timeout=timeout
            )
        except _CLIENT_ERRORS as exc:
            raise _translate_aiohttp(exc, url) from exc
        return Stream(response, url)

    async def get(self, url: str, deadline_seconds: float) -> Response:
        try:
            async with self._client().get(
                url, timeout=self._deadline(deadline_seconds)
            ) as response:
                return Response(response.status, response.headers, await response.read())
        except _CLIENT_ERRORS as exc:
            raise _translate_aiohttp(exc, url) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApiClient:
    """A minimal Kubernetes API client: GET lists and watch streams as JSON lines.

    The token is re-read on every request (projected tokens rotate).  Only used by discovery.
    """

    def __init__(
        self,
        base_url: str,
        token_path: Path = SERVICE_ACCOUNT / "token",
        ca_path: Path | None = SERVICE_ACCOUNT / "ca.crt",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._token_path = token_path
        verify: ssl.SSLContext | bool = True
        if ca_path is not None and ca_path.exists():
            verify = ssl.create_default_context(cafile=str(ca_path))
        self._client = httpx.AsyncClient(
            base_url=base_url,
            verify=verify,
            timeout=httpx.Timeout(connect=5.0, read=60.0, write=10.0, pool=10.0),
            transport=transport,
            trust_env=False,
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request

    @classmethod
    def in_cluster(cls) -> KubeApiClient:
        import os

        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise UpstreamError("connect", "not in a cluster: KUBERNETES_SERVICE_HOST is unset")
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}")

    def _headers(self) -> dict[str, str]:
        try:
            token = self._token_path.read_text(encoding="utf-8").strip()
        except OSError:
            return {}
        return {"Authorization": f"Bearer {token}"}

    async def get_json(self, path: str, params: Mapping[str, str]) -> Any:
        try:
            response = await self._client.get(path, params=dict(params), headers=self._headers())
        except httpx.HTTPError as exc:
            raise _translate(exc, path) from exc
        if response.status_code != 200:
            raise UpstreamError(
                "status", f"{path}: HTTP {response.status_code}", response.status_code
            )
        return response.json()

    async def watch_lines(
        self, path: str, params: Mapping[str, str], timeout_seconds: float
    ) -> AsyncIterator[str]:
        """The lines of a watch stream (one JSON event each) until the server ends it."""
        try:
            async with self._client.stream(
                "GET",
                path,
                params=dict(params),
                headers=self._headers(),
                timeout=httpx.Timeout(
                    connect=5.0, read=timeout_seconds + 10.0, write=10.0, pool=10.0
                ),
            ) as response:
                if response.status_code != 200:
                    raise UpstreamError(
                        "status", f"{path}: HTTP {response.status_code}", response.status_code
                    )
                async for line in response.aiter_lines():
                    if line.strip():
                        yield line
        except httpx.HTTPError as exc:
            raise _translate(exc, path) from exc

    async def aclose(self) -> None:
        await self._client.aclose()

"""The ONE module that imports an HTTP client: the gateway's long-lived clients and errors.

Two clients, both created once per process: ``UpstreamClient`` talks to the vLLM workers,
``KubeApiClient`` to the Kubernetes API server (EndpointSlice discovery) with the pod's
service-account token and CA.  Everything else in the gateway sees plain bytes, status codes and
``UpstreamError`` -- switching HTTP client is a change to this file only, and it was made twice,
each time measured on the benchmark's closed loop (bench/gateway_bench.py, py-spy): httpx spent
77% of the gateway's CPU per request (29% in its pool's per-request scan of every pooled socket),
so the worker path moved to aiohttp; aiohttp in turn was 34% of the CPU (plus timer and callback
work in the event loop), so the worker path now runs on ``connection`` -- bare asyncio with
httptools, the subset of HTTP/1.1 the gateway needs.  The API-server client stays on httpx (a
handful of requests a minute, and its transport injection makes discovery testable without a
server).

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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from disagg.gateway.connection import (
    BrokenAnswer,
    ConnectFailed,
    Connection,
    ConnectionPool,
    Origin,
    ReadTimeout,
    split_url,
)
from disagg.gateway.routing.frozen import fast_init

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


def _translate_wire(exc: Exception, url: str) -> UpstreamError:
    # A connect that failed or timed out never delivered the request: the worker did not see it.
    if isinstance(exc, ConnectFailed):
        return UpstreamError("connect", f"{url}: cannot connect ({exc})")
    if isinstance(exc, ReadTimeout):
        return UpstreamError("timeout", f"{url}: timed out ({exc})")
    return UpstreamError("protocol", f"{url}: {type(exc).__name__}: {exc}")


def _translate(exc: httpx.HTTPError, url: str) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError("timeout", f"{url}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("connect", f"{url}: cannot connect ({exc})")
    return UpstreamError("protocol", f"{url}: {type(exc).__name__}: {exc}")


_WIRE_ERRORS = (ConnectFailed, ReadTimeout, BrokenAnswer, OSError)


@fast_init
@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    """Names in lower case."""
    body: bytes


class Stream:
    """An open streaming response: status and headers now, the raw body bytes as they come."""

    def __init__(self, conn: Connection, pool: ConnectionPool, url: str) -> None:
        self._conn = conn
        self._pool = pool
        self._url = url
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers

    async def next_chunk(self) -> bytes | None:
        """The next body bytes as the worker sent them (de-chunked, never decoded or re-framed);
        None at the end.  A method, not an async generator: asyncio registers every generator
        that starts (a hook and a weak set entry) and closing one is another coroutine."""
        try:
            return await self._conn.next_chunk()
        except _WIRE_ERRORS as exc:
            raise _translate_wire(exc, self._url) from exc

    def pipe(
        self,
        on_data: Callable[[bytes], None],
        on_end: Callable[[bytes, UpstreamError | None], None],
    ) -> None:
        """The rest of the body to callbacks, without a coroutine per chunk: ``on_data`` gets
        what arrived together, ``on_end`` runs once, with the bytes that arrived with the end
        (so that they can leave in one write) and the error if the answer broke."""

        def end(tail: bytes, exc: Exception | None) -> None:
            on_end(tail, None if exc is None else _translate_wire(exc, self._url))

        self._conn.attach(on_data, end)

    def pause(self) -> None:
        self._conn.pause()

    def resume(self) -> None:
        self._conn.resume()

    async def read(self) -> bytes:
        try:
            return await self._conn.read_all()
        except _WIRE_ERRORS as exc:
            raise _translate_wire(exc, self._url) from exc

    def release(self) -> None:
        """Return the connection to the pool if the body was read, else close it."""
        self._pool.release(self._conn)


class UpstreamClient:
    """One connection pool for every worker of both pools (created in the running loop)."""

    def __init__(
        self,
        connect_seconds: float = 5.0,
        stream_idle_seconds: float = 300.0,
        keep_alive_expiry_seconds: float = 4.0,
    ) -> None:
        self._connect = connect_seconds
        self._idle = stream_idle_seconds
        self._pool = ConnectionPool(connect_seconds, keep_alive_expiry_seconds)
        self._origins: dict[str, tuple[Origin, str]] = {}

    def _split(self, url: str) -> tuple[Origin, str]:
        split = self._origins.get(url)
        if split is None:
            if len(self._origins) > 4096:  # worker URLs are few; never grow without bound
                self._origins.clear()
            split = self._origins[url] = split_url(url)
        return split

    async def _exchange(
        self, method: bytes, url: str, body: bytes, headers: Mapping[str, str], deadline: float
    ) -> Response:
        origin, target = self._split(url)
        conn: Connection | None = None
        try:
            conn = await self._pool.acquire(origin, min(self._connect, deadline))
            timer = conn.fail_after(deadline)
            try:
                conn.send(method, target, headers, body)
                content = await conn.read_whole()
            finally:
                timer.cancel()
            return Response(conn.status, conn.headers, content)
        except _WIRE_ERRORS as exc:
            raise _translate_wire(exc, url) from exc
        finally:
            if conn is not None:
                self._pool.release(conn)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], deadline_seconds: float
    ) -> Response:
        """POST and read the whole answer; HTTP error statuses are returned, not raised."""
        return await self._exchange(b"POST", url, body, headers, deadline_seconds)

    async def open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], first_byte_seconds: float
    ) -> Stream:
        """POST and return once the response headers are in; the body is read via ``Stream``.

        ``first_byte_seconds`` bounds each wait for data; there is no total deadline: a
        generation may run for many minutes.
        """
        origin, target = self._split(url)
        conn: Connection | None = None
        try:
            conn = await self._pool.acquire(origin)
            conn.send(b"POST", target, headers, body)
            conn.watch_idle(max(first_byte_seconds, self._idle))
            await conn.head_and_data()
        except _WIRE_ERRORS as exc:
            if conn is not None:
                conn.close()
            raise _translate_wire(exc, url) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return Stream(conn, self._pool, url)

    async def get(self, url: str, deadline_seconds: float) -> Response:
        return await self._exchange(b"GET", url, b"", {}, deadline_seconds)

    async def aclose(self) -> None:
        self._pool.close()


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

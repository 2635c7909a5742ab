"""A lean HTTP/1.1 client for the overhead benchmark's load: keep-alive POSTs on bare asyncio.

Why not httpx: the load generator shares the machine's two cores with the sims and the router
under test, and httpx costs about a millisecond of CPU per streamed request.  With it every
phase ran at ~35-100 req/s whatever its concurrency -- the client, not the routers, set the
pace, so "256 streams" measured routers that were mostly idle.  This client writes a request
in one ``write``, parses the answer with httptools (the C parser the gateway uses) and wakes
the caller once, when the answer is complete, so the routers see the load a phase names.

Only what the benchmark needs: POST a body to a loopback URL, read the whole answer (plain or
chunked), one request at a time per connection, connections reused per origin.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools


class ClientError(Exception):
    """The connection failed or closed before the answer was complete, or was not HTTP."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.status = 0
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(ClientError(f"invalid HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(ClientError("the connection closed before the answer was complete"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        done = self._done
        if done is not None and not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._body.clear()
        self.status = 0
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self._done
        return self.status, b"".join(self._body)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LeanClient:
    """``post`` a body, get ``(status, body)``; idle connections are kept per origin."""

    def __init__(self, timeout_seconds: float = 120.0) -> None:
        self.timeout = timeout_seconds
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, int], bytes]] = {}

    def _target(self, url: str) -> tuple[tuple[str, int], bytes]:
        known = self._targets.get(url)
        if known is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"only plain http URLs are supported: {url}")
            origin = (parts.hostname, parts.port or 80)
            head = b"POST %s HTTP/1.1\r\nHost: %s:%d\r\n" % (
                (parts.path or "/").encode("ascii"),
                origin[0].encode("ascii"),
                origin[1],
            )
            known = self._targets[url] = (origin, head)
        return known

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        origin, head = self._target(url)
        idle = self._idle.setdefault(origin, [])
        conn = None
        while idle and conn is None:
            candidate = idle.pop()
            if not candidate.closed:
                conn = candidate
        if conn is None:
            loop = asyncio.get_running_loop()
            try:
                _, conn = await loop.create_connection(_Connection, *origin)
            except OSError as exc:
                raise ClientError(f"connect to {origin[0]}:{origin[1]}: {exc}") from exc
        request = b"%scontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
            head,
            len(body),
            body,
        )
        try:
            async with asyncio.timeout(self.timeout):
                answer = await conn.exchange(request)
        except BaseException:
            conn.close()
            raise
        if conn.keep_alive and not conn.closed:
            idle.append(conn)
        else:
            conn.close()
        return answer

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

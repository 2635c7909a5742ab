"""HTTP/1.1 to the workers on bare asyncio: keep-alive connections, one parser, few timers.

Why not a general client: profiled on the benchmark's closed loop (bench/gateway_bench.py,
py-spy), aiohttp's client was 34% of the gateway's CPU per request, and the event loop's own
work on its behalf (a timer per read, per-request futures and callbacks) much of another 37%.
The gateway needs a small subset of HTTP -- POST a JSON body and GET, to a known set of
workers, over plain or TLS TCP -- so this module does exactly that: the request head and body
leave in one ``write``, responses are parsed by httptools (the C parser uvicorn already uses on
the client side of the gateway), and a body is handed on as the bytes the parser produced.

**Timers.** A deadline (non-streaming legs) is one ``call_at`` per exchange.  The idle-read
timeout of a stream is lazy (``deadline.LazyDeadline``): received data only stamps the time;
one timer per idle period checks the stamp and re-arms itself for the remainder -- no timer
work per token.

**Wake-ups.** Workers write an answer's head and body apart, and at one request in flight every
wake-up of the gateway is a context switch with cold caches -- the largest cost per request
that the profile showed.  So a reader is woken once for what it needs: ``read_whole`` (the
non-streaming legs) when the answer is complete, ``head_and_data`` (a stream) when the head
has come with the start of the body.

**Flow control.** A stream's unread bytes are bounded: past ``HIGH_WATER`` the socket stops
being read (TCP pushes back on the worker) until the client has taken them.

**Piping.** Once a stream is committed to a client, ``attach`` hands its body to two callbacks
instead of the buffer: whatever one ``data_received`` parsed reaches ``on_data`` as one bytes
object (tokens that arrived together leave together), and the end of the answer -- or its
failure -- reaches ``on_end`` once, with the bytes parsed in the same read (a worker's last
event and the body's end usually arrive together, and the client then gets them in one write,
not two).  No future, task or coroutine runs per token; the reader applies back-pressure with
``pause``/``resume``.

**Pooling.** Connections are reused per ``(scheme, host, port)``, most recently used first, so
surplus ones age out: an idle connection older than the keep-alive expiry is closed instead of
reused (vLLM closes idle ones after 5 s; a request sent just as the server closes would fail).
The pool has no cap of its own: the gateway's admission (``queue.*.maxInflightPerWorker``) bounds
the requests -- hence the connections -- open to one worker at a time, so the pool is sized by
the engines' limits and a burst never queues twice.  A connection is reused only after its
answer was read to the end and the worker allowed keep-alive.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import httptools

from disagg.gateway.deadline import LazyDeadline

HIGH_WATER = 256 * 1024
"""Unread stream bytes past which the connection stops reading from the worker."""
LOW_WATER = 64 * 1024


class ConnectFailed(Exception):
    """The connection could not be made: the worker never saw the request."""


class ReadTimeout(Exception):
    """No answer (or no more of it) within the deadline or the idle-read timeout."""


class BrokenAnswer(Exception):
    """The connection closed mid-answer, or the answer was not valid HTTP."""


Origin = tuple[str, str, int]
"""(scheme, host, port)."""


def split_url(url: str) -> tuple[Origin, str]:
    """``http://host:port/path?q`` -> ((scheme, host, port), "/path?q")."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return (scheme, host, port), target


class Connection(asyncio.Protocol):
    """One TCP connection; one exchange at a time (no pipelining)."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.host_header = (
            f"{origin[1]}:{origin[2]}" if ":" not in origin[1] else f"[{origin[1]}]:{origin[2]}"
        ).encode("ascii")
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._quiet = LazyDeadline(self._loop, 0.0, self._too_quiet)
        """A stream's idle-read timeout (``watch_idle``): each read moves ``since`` forward."""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = False
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: Exception | None = None
        self._names: list[bytes] = []
        self._values: list[bytes] = []
        self._has_length = False
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[bytes, Exception | None], None] | None = None
        self._batch: list[bytes] = []
        self._feeding = False
        self._ended = False
        self._whole = False  # the reader wants the whole answer: wake it once, at the end
        self._head_with_data = False  # the head is awaited together with the body's start

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        quiet = self._quiet
        if quiet.since is not None:
            quiet.since = self._loop.time()
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BrokenAnswer(f"invalid HTTP from the worker: {exc}"))
            self.close()
        finally:
            self._feeding = False
        if self._on_data is not None:
            self._deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is not None and not self.complete:
            if self._head.done() and not self._has_length and self._error is None:
                self._on_complete()  # a body delimited by the connection's end
            else:
                self._fail(BrokenAnswer("the worker closed the connection mid-answer"))
        self._cancel_idle()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._names.append(name)
        self._values.append(value)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        headers = {
            n.decode("latin-1").lower(): v.decode("latin-1")
            for n, v in zip(self._names, self._values, strict=True)
        }
        self.headers = headers
        self._has_length = "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", ""
        )
        if self._head is not None and not self._head.done() and not self._head_with_data:
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._on_data is not None:
            self._batch.append(body)  # delivered when this read is parsed
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._head_with_data and self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._whole:
            return  # ``read_whole`` reads it all anyway: no pause, no wake per chunk
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._on_complete()

    def _on_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive() and not self.closed
        self._cancel_idle()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        self._wake()

    # -- the exchange --------------------------------------------------------------------------
    def send(self, method: bytes, target: str, headers: Mapping[str, str], body: bytes) -> None:
        """Write the request and start waiting for its answer."""
        assert self.transport is not None
        self._reset()
        self._head = self._loop.create_future()
        lines = [method, b" ", target.encode("ascii"), b" HTTP/1.1\r\nHost: ", self.host_header]
        for name, value in headers.items():
            lines += [b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1")]
        if method != b"GET" or body:
            lines += [b"\r\nContent-Length: ", str(len(body)).encode("ascii")]
        lines += [b"\r\nAccept-Encoding: identity\r\n\r\n", body]
        self.transport.write(b"".join(lines))

    def watch_idle(self, seconds: float) -> None:
        """Fail the exchange if no bytes arrive for ``seconds`` (checked lazily)."""
        self._quiet.cancel()  # a timer left from an exchange before would fire too early
        self._quiet.seconds = seconds
        self._quiet.start()

    def _too_quiet(self) -> None:
        if not self.complete and not self.closed:
            self.fail_timeout(f"no data for {self._quiet.seconds:g}s")

    def _cancel_idle(self) -> None:
        self._quiet.cancel()

    def fail_after(self, seconds: float) -> asyncio.TimerHandle:
        """Fail the exchange unless its answer is in within ``seconds`` (cancel the handle)."""
        return self._loop.call_later(seconds, self._deadline_passed, seconds)

    def _deadline_passed(self, seconds: float) -> None:
        self.fail_timeout(f"no answer in {seconds:g}s")  # worded only when it happens

    def fail_timeout(self, why: str) -> None:
        self._fail(ReadTimeout(why))
        self.close()

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved here: nobody may be awaiting it
        self._wake()

    def _wake(self) -> None:
        if self._on_data is not None:
            if not self._feeding:
                self._deliver()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def attach(
        self,
        on_data: Callable[[bytes], None],
        on_end: Callable[[bytes, Exception | None], None],
    ) -> None:
        """Hand the rest of the body to callbacks (what is buffered, at once); see *Piping*."""
        self._batch = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._on_data, self._on_end = on_data, on_end
        if self._paused:
            self.resume()
        self._deliver()

    def _deliver(self) -> None:
        on_data, on_end = self._on_data, self._on_end
        assert on_data is not None and on_end is not None
        batch = self._batch
        data = b""
        if batch:
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            batch.clear()
        if not self._ended and (self.complete or self._error is not None):
            self._ended = True
            on_end(data, self._error)  # the last bytes go with the end: one write, not two
        elif data:
            on_data(data)

    def pause(self) -> None:
        """Stop reading from the worker (TCP pushes back on it) until ``resume``."""
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    async def head_and_data(self) -> None:
        """The head, once some of the body came too (or the answer ended, or failed): a worker
        writes its head and first event apart, and the reader wants both -- one wake-up of the
        reading task, not two."""
        assert self._head is not None
        self._head_with_data = True
        await self._head

    async def next_chunk(self) -> bytes | None:
        """The next body bytes as parsed; None at the end of the answer."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read_whole(self) -> bytes:
        """The whole answer (head and body), for which the task wakes once: when it is complete
        or has failed -- not at the head and at every body chunk."""
        self._whole = True
        while not self.complete and self._error is None:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def read_all(self) -> bytes:
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self.closed = True
        self._cancel_idle()
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Idle keep-alive connections per origin, most recently used first."""

    def __init__(self, connect_seconds: float, keep_alive_seconds: float) -> None:
        self._connect = connect_seconds
        self._keep_alive = keep_alive_seconds
        self._idle: dict[Origin, list[Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def acquire(self, origin: Origin, connect_seconds: float | None = None) -> Connection:
        idle = self._idle.get(origin)
        if idle:
            oldest_allowed = time.monotonic() - self._keep_alive
            while idle:
                conn = idle.pop()
                if not conn.closed and conn.idle_since >= oldest_allowed:
                    return conn
                conn.close()
        return await self._open(origin, connect_seconds or self._connect)

    async def _open(self, origin: Origin, seconds: float) -> Connection:
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                _, conn = await loop.create_connection(
                    lambda: Connection(origin), host, port, ssl=tls
                )
        except TimeoutError:
            raise ConnectFailed(f"connect timed out after {seconds:g}s") from None
        except OSError as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        return conn

    def release(self, conn: Connection) -> None:
        """Back to the pool if its answer was read to the end and keep-alive holds; else close."""
        if conn.complete and conn.keep_alive and not conn.closed:
            conn.resume()  # a reader that paused it may have been handed the end meanwhile
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

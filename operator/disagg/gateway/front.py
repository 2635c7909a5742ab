"""The two completion routes on the wire: uvicorn parses, the gateway writes its own answers.

Why: profiled on the benchmark's closed loop (bench/gateway_bench.py, py-spy), a streamed token
cost more in the ASGI layers than in the relay itself -- an async generator per layer (worker
body, relay, Starlette's response), a coroutine and a message dict per ``send``, uvicorn's
header and flow checks per chunk.  So ``server`` hands ``POST /v1/completions`` and ``POST
/v1/chat/completions`` to ``serve`` below instead of the ASGI app, on the same connection and
the same parsed request (uvicorn's ``RequestResponseCycle`` keeps collecting the body and noting
a disconnect); every other route, and every other method on these paths, stays with the
Starlette app -- as do keep-alive, pipelining, the header limits and the graceful shutdown,
which read the same cycle.

What is written: a whole answer is one ``write`` (status line, headers, body).  A stream is
its head plus the events held back until the first output, then *piped*: the worker
connection's ``on_data`` callback feeds the relay (``relay.SSERelay``) and writes the complete
events it returns as one HTTP chunk -- no coroutine, future or task per token, and events that
arrived in one read leave in one write.  Back-pressure is TCP's: when the client's socket
buffer fills, uvicorn's ``pause_writing`` pauses reading from the worker until it drains.  A
client that disconnects cancels the flow before the answer (``ClientGone``, counted 499) and,
mid-stream, closes the worker connection (the worker aborts the request) and frees the slot.

The answers are the app's (``Gateway.answer``): same validation, errors, headers and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, Protocol

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
from uvicorn.server import ServerState

from disagg.gateway.app import CLIENT_CLOSED, Gateway, Outcome, discard, refusal
from disagg.gateway.context import Route
from disagg.gateway.relay import RelaySource
from disagg.gateway.replies import ClientGone, Reply, StreamReply
from disagg.gateway.requests import BadRequest, Kind
from disagg.gateway.upstream import UpstreamError

log = logging.getLogger(__name__)

HOT_PATHS: dict[str, Kind] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
"""The routes served here (POST only)."""
_END = b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (b"" for no data: an empty chunk would end the body)."""
    return b"".join((b"%x\r\n" % len(data), data, b"\r\n")) if data else b""


_defaults: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def _default_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (``date``, ``server``) as lines, joined once per list: uvicorn
    replaces the list when the date changes, once a second, not per request."""
    global _defaults
    cached, lines = _defaults
    if headers is not cached:
        lines = b"".join(b"%s: %s\r\n" % field for field in headers)
        _defaults = (headers, lines)
    return lines


class ClientConnection(Protocol):
    """What is used of the client's connection (``server.LimitedProtocol``)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: FlowControl
    server_state: ServerState
    watcher: Exchange | None


class Exchange:
    """One request served here: what the connection tells it (``client_gone``,
    ``pause_writing``, ``resume_writing``) and what it writes back."""

    def __init__(self, conn: ClientConnection, cycle: RequestResponseCycle) -> None:
        self.conn = conn
        self.cycle = cycle
        self.transport = conn.transport
        self.gone = False
        self._task: asyncio.Task[Any] | None = None
        self._source: RelaySource | None = None
        self._finished: asyncio.Future[None] | None = None

    # -- what the connection reports ------------------------------------------------------------
    def client_gone(self) -> None:
        self.gone = True
        if self._source is not None:
            self._stop_stream()
        elif self._task is not None:
            self._task.cancel()  # lands in the flow: workers abort, slots are released

    def pause_writing(self) -> None:
        if self._source is not None:
            self._source.stream.pause()

    def resume_writing(self) -> None:
        if self._source is not None:
            self._source.stream.resume()

    # -- the request ----------------------------------------------------------------------------
    async def read_body(self, limit: int, seconds: float, declared: str | None) -> bytes:
        """The body uvicorn collected; waits (bounded by ``seconds``) only for one that has not
        all arrived with its headers."""
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(
                f"request body is {declared} bytes; the limit is {limit}", None, "request_too_large"
            )
        cycle = self.cycle
        if cycle.more_body and not cycle.disconnected:
            async with asyncio.timeout(seconds):
                while cycle.more_body and not cycle.disconnected and len(cycle.body) <= limit:
                    if cycle.waiting_for_100_continue and not self.transport.is_closing():
                        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                        cycle.waiting_for_100_continue = False
                    cycle.message_event.clear()
                    self.conn.flow.resume_reading()  # uvicorn pauses past 64 KiB unread
                    await cycle.message_event.wait()
        if cycle.disconnected:
            raise ClientGone
        if len(cycle.body) > limit:
            raise BadRequest(
                f"request body exceeds the limit of {limit} bytes", None, "request_too_large"
            )
        body = bytes(cycle.body)
        cycle.body = bytearray()
        return body

    async def until_gone(self, work: Coroutine[Any, Any, Outcome]) -> Outcome:
        """Run the flow in this task; a disconnect meanwhile cancels it (``ClientGone``)."""
        if self.gone:
            work.close()
            raise ClientGone
        task = self._task = asyncio.current_task(self.conn.loop)
        assert task is not None
        try:
            outcome = await work
        except asyncio.CancelledError:
            if not self.gone:
                raise
            task.uncancel()
            raise ClientGone from None
        finally:
            self._task = None
        if self.gone:  # answered just as the client left
            await discard(outcome)
            raise ClientGone
        return outcome

    # -- the answer -----------------------------------------------------------------------------
    def _head(self, status: int, content_type: str, extra: dict[str, str], route: Route) -> bytes:
        """Status line and headers; ``keep_alive`` ends false if a header asks to close."""
        lines = [STATUS_LINE[status], _default_lines(self.conn.server_state.default_headers)]
        if content_type.startswith("text/") and "charset=" not in content_type:
            content_type += "; charset=utf-8"  # as Starlette's responses say it
        fields = route.headers()
        has_connection = False
        if extra:  # the answer's own headers first; of a name given twice, the first counts
            merged: dict[str, str] = {}
            present = set()
            for name, value in (*extra.items(), *fields.items()):
                key = name.lower()
                if key in present:
                    continue
                present.add(key)
                merged[name] = value
                if key == "connection":
                    has_connection = True
                    if "close" in value.lower():
                        self.cycle.keep_alive = False
            fields = merged
        # Without ``extra`` there is nothing to merge: the route's names are distinct and never
        # ``connection``.  One str, encoded once, not a bytes object per name and value.
        text = "".join([f"{name}: {value}\r\n" for name, value in fields.items()])
        lines += [b"content-type: ", content_type.encode("latin-1"), b"\r\n"]
        lines.append(text.encode("latin-1"))
        if not self.cycle.keep_alive and not has_connection:
            lines.append(b"connection: close\r\n")
        return b"".join(lines)

    def reply(self, reply: Reply, route: Route) -> None:
        if self.cycle.disconnected:
            return
        head = self._head(reply.status, reply.content_type, reply.headers, route)
        length = b"content-length: %d\r\n\r\n" % len(reply.body)
        self.transport.write(b"".join((head, length, reply.body)))
        self._complete()

    def _complete(self) -> None:
        cycle = self.cycle
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()

    async def pipe(self, reply: StreamReply, route: Route) -> None:
        """Write the stream's head, then pipe the worker's events until the stream ends."""
        source = reply.source
        assert source is not None  # the decode leg sets it
        self._source = source
        self._finished = self.conn.loop.create_future()
        head = self._head(200, reply.content_type, reply.headers, route)
        first = source.relay.feed(source.head)
        self.transport.write(b"".join((head, b"transfer-encoding: chunked\r\n\r\n", _chunk(first))))
        self.cycle.response_started = True
        source.stream.pipe(self._on_data, self._on_end)
        if self._source is not None and self.conn.flow.write_paused:
            source.stream.pause()
        try:
            await self._finished
        finally:
            if self._source is not None:  # cancelled (a forced shutdown): drop the stream
                self._stop_stream()
                self.transport.close()  # the client sees the body cut, not a hang

    def _on_data(self, data: bytes) -> None:
        source = self._source
        if source is None:
            return
        out = source.relay.feed(data)
        if out:
            self.transport.write(b"".join((b"%x\r\n" % len(out), out, b"\r\n")))

    def _on_end(self, tail: bytes, error: UpstreamError | None) -> None:
        source = self._source
        if source is None:
            return
        self._source = None
        relay = source.relay
        last = relay.feed(tail) if tail else b""
        self.transport.write(b"".join((_chunk(last), _chunk(relay.end(error)), _END)))
        source.relay.finish()
        source.stream.release()
        self._complete()
        self._resolve()

    def _stop_stream(self) -> None:
        """The client left mid-stream (or the server is forced down): drop the worker's
        connection -- it aborts the request -- and free the request's slot."""
        source = self._source
        if source is None:
            return
        self._source = None
        source.relay.finish()
        source.stream.release()  # unfinished: closed, not pooled
        self._resolve()

    def _resolve(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)


class Front:
    """The completion routes of one gateway, served on uvicorn's connections."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        config = gateway.config
        self.max_body_bytes = config.max_body_bytes
        self.body_read_seconds = config.timeouts.body_read_seconds
        self._counters: dict[tuple[str, int], Any] = {}

    def _count(self, path: str, status: int) -> None:
        counter = self._counters.get((path, status))
        if counter is None:
            counter = self.gateway.metrics.requests.labels(path, str(status))
            self._counters[(path, status)] = counter
        counter.inc()

    async def serve(self, conn: ClientConnection, cycle: RequestResponseCycle, kind: Kind) -> None:
        exchange = Exchange(conn, cycle)
        conn.watcher = exchange
        path = cycle.scope["path"]
        route = Route(f"disagg-{os.urandom(16).hex()}")
        try:
            fields = list(cycle.scope["headers"])  # lower-case names; the first of a name counts
            headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in reversed(fields)}
            declared = headers.get("content-length")
            outcome = await self.gateway.answer(
                kind,
                route,
                headers,
                lambda: exchange.read_body(self.max_body_bytes, self.body_read_seconds, declared),
                exchange.until_gone,
            )
            if isinstance(outcome, StreamReply):
                self._count(path, 200)
                await exchange.pipe(outcome, route)
            else:
                self._count(path, outcome.status)
                if outcome.status != CLIENT_CLOSED:
                    exchange.reply(outcome, route)
        except Exception:
            log.exception("request %s failed inside the gateway", route.request_id)
            if not cycle.response_started and not cycle.disconnected:
                exchange.reply(refusal(500, f"internal gateway error (request "
                               f"{route.request_id})", "internal_error", 500), route)  # fmt: skip
            else:
                conn.transport.close()
        finally:
            if conn.watcher is exchange:
                conn.watcher = None

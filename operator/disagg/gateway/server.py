"""The gateway's HTTP server: uvicorn with header limits and a graceful, two-step shutdown.

**Header limits.** uvicorn's fast parser (httptools) has no limit on the request line and
headers -- a client could send a megabyte of them, or dribble them forever.  ``LimitedProtocol``
counts the bytes and fields before the headers complete and answers ``431`` (OpenAI-shaped, with
the route headers every gateway answer carries) past ``limits.maxHeaderBytes`` /
``limits.maxHeaders``, and closes a connection whose headers have not arrived within
``timeouts.headerReadSeconds``.  The body has its own timeout in ``app``.

**Shutdown.** On SIGTERM a pod is removed from its Service, but load balancers and kube-proxy
learn that a moment later; a server that stopped accepting at once would refuse their last
requests.  So the first SIGTERM only marks the gateway draining (``/ready`` answers 503) and
keeps serving for ``shutdown.delaySeconds``; then uvicorn stops accepting, lets in-flight
requests -- streams included -- finish for up to ``shutdown.timeoutSeconds``, and exits.  A second
SIGTERM skips the delay; a second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import uuid
from types import FrameType
from typing import Any

import uvicorn
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from disagg.gateway.app import Gateway
from disagg.gateway.config import GatewayConfig
from disagg.gateway.deadline import LazyDeadline
from disagg.gateway.front import HOT_PATHS, Exchange, Front
from disagg.gateway.workers import REUSE_PORT_ENV

log = logging.getLogger(__name__)
LINGER_SECONDS = 2.0
"""After refusing a request, how long the gateway keeps discarding what the client still sends."""


def _too_large_response(why: str) -> bytes:
    request_id = f"disagg-{uuid.uuid4().hex}"
    body = json.dumps(
        {
            "error": {
                "message": f"request headers too large: {why}",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_header_fields_too_large",
            }
        }
    ).encode()
    head = [
        b"HTTP/1.1 431 Request Header Fields Too Large",
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        b"x-request-id: " + request_id.encode(),
        b"x-disagg-route: none",
        b"x-disagg-route-reason: refused before routing",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class LimitedProtocol(HttpToolsProtocol):
    """httptools with bounds on the request line + headers (size, count, time), serving the
    completion routes itself (``front``) and everything else through the ASGI app."""

    max_header_bytes = 16384
    max_headers = 100
    header_read_seconds = 30.0
    front: Front | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watcher: Exchange | None = None
        """The request ``front`` is serving on this connection, told of a disconnect and of
        the client's socket filling and draining."""
        self._header_bytes = 0  # raw bytes received while the headers are incomplete
        self._parsed_bytes = 0  # the request line and header fields parsed so far
        self._in_headers = True
        self._discarding = False
        # Both timers are lazy (``deadline``): a request's start, a response's end and the next
        # request's bytes only stamp or clear a time -- no timer is made and cancelled per
        # request (uvicorn's keep-alive timer was, and the profile showed it).
        self._headers_due = LazyDeadline(self.loop, self.header_read_seconds, self._headers_late)
        """From a connection's start or a request's first byte until its headers are in."""
        self._keep_alive = LazyDeadline(self.loop, self.timeout_keep_alive, self._idle_too_long)
        """From a response's end until the next request's bytes (uvicorn's keep-alive)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_due.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_due.cancel()
        self._keep_alive.cancel()
        super().connection_lost(exc)
        if self.watcher is not None:
            self.watcher.client_gone()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.watcher is not None:
            self.watcher.pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.watcher is not None:
            self.watcher.resume_writing()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        front = self.front
        scope = cycle.scope
        kind = HOT_PATHS.get(scope["path"]) if scope["method"] == "POST" else None
        if kind is None or front is None or app is not self.app:  # not ours, or uvicorn's 503
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(front.serve(self, cycle, kind))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _headers_late(self) -> None:
        if not self.transport.is_closing():
            log.info("closing a connection whose headers did not arrive in time")
            self.transport.close()

    def _idle_too_long(self) -> None:
        if not self.transport.is_closing():
            self.timeout_keep_alive_handler()

    def _refuse(self, why: str) -> None:
        """Answer 431 and close *lingering*: a socket closed while the client is still sending
        resets the connection and can destroy the answer in flight, so the gateway half-closes,
        discards what still arrives for a moment, then closes."""
        log.info("refused a request: headers too large (%s)", why)
        self._headers_due.cancel()
        self._discarding = True
        self.transport.write(_too_large_response(why))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._discarding or self.transport.is_closing():
            return
        was_in_headers = self._in_headers
        super().data_received(data)
        if was_in_headers and self._in_headers and not self._discarding:
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(f"more than {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = self._parsed_bytes = 0
        self._headers_due.start()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._parsed_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._parsed_bytes += len(name) + len(value) + 4
        too_many = len(self.headers) > self.max_headers
        if not too_many and self._parsed_bytes <= self.max_header_bytes:
            return  # within the limits: the usual case, checked first
        if self._discarding or self.transport.is_closing():
            return
        if too_many:
            self._refuse(f"more than {self.max_headers} header fields")
        else:
            self._refuse(f"more than {self.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        if self._discarding or self.transport.is_closing():
            return
        self._in_headers = False
        self._headers_due.stop()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._discarding and not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._discarding and not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, with the lazy keep-alive timer."""
        self.server_state.total_requests += 1
        self._in_headers = True  # the next request on this connection starts its headers
        self._header_bytes = 0
        if self.transport.is_closing():
            return
        self._keep_alive.stop()
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request starts now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._keep_alive.start()

    def _unset_keepalive_if_required(self) -> None:
        self._keep_alive.stop()  # the next request's bytes arrived


def protocol_for(config: GatewayConfig, front: Front | None = None) -> type[LimitedProtocol]:
    """A protocol class carrying this config's limits and the gateway's completion routes
    (uvicorn instantiates it per connection)."""
    return type(
        "GatewayProtocol",
        (LimitedProtocol,),
        {
            "max_header_bytes": config.limits.max_header_bytes,
            "max_headers": config.limits.max_headers,
            "header_read_seconds": config.timeouts.header_read_seconds,
            "front": front,
        },
    )


class GatewayServer(uvicorn.Server):
    """uvicorn, with the first SIGTERM delayed while the gateway drains out of rotation."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, delay_seconds: float) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.Future[None] | None = None
        super().__init__(config)
        self.gateway = gateway
        self.delay_seconds = delay_seconds

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    # uvicorn's housekeeping loop wakes ten times a second to see whether it should exit; an
    # idle gateway spent most of its CPU on those wake-ups (2.5 of 4 ms a second, and each cost
    # a request in flight a context switch).  Here it wakes once a second -- uvicorn's own
    # cadence for the Date header -- and at once when ``should_exit`` is set.
    @property
    def should_exit(self) -> bool:
        return bool(self.__dict__.get("_should_exit", False))

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self.__dict__["_should_exit"] = value
        tick, loop = self._tick, self._loop
        if value and tick is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_resolve, tick)

    async def main_loop(self) -> None:
        loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # uvicorn counts tenths; 10 = a Date update
            self._tick = tick = loop.create_future()
            timer = loop.call_later(1.0, _resolve, tick)
            if self.should_exit:  # set before the future existed
                _resolve(tick)
            try:
                await tick
            finally:
                timer.cancel()
                self._tick = None
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.gateway.draining or self.delay_seconds <= 0 or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self.gateway.draining = True
        self._captured_signals.append(sig)
        log.info(
            "shutting down: /ready fails now, new connections are refused in %gs",
            self.delay_seconds,
        )

        def stop() -> None:
            self.should_exit = True

        loop = self._loop
        loop.call_soon_threadsafe(loop.call_later, self.delay_seconds, stop)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two young-generation collections (CPython's default: 700)."""


def tune_gc() -> None:
    """Collect less often on the request path.  Each request allocates a few hundred short-lived
    containers; with CPython's defaults a young collection ran every request or two and the
    collector was ~7% of the gateway's CPU (py-spy --native on the benchmark's closed loop).
    What exists at start-up (modules, config, the app) is frozen: never scanned again."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def serve(gateway: Gateway, host: str, port: int, log_level: str) -> None:
    config = gateway.config
    tune_gc()
    uv_config = uvicorn.Config(
        gateway.app(),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=65,
        http=protocol_for(config, Front(gateway)),
        timeout_graceful_shutdown=int(config.shutdown.timeout_seconds) or None,
    )
    server = GatewayServer(uv_config, gateway, config.shutdown.delay_seconds)
    if os.environ.get(REUSE_PORT_ENV):  # one of several processes on this port (``workers``)
        server.run(sockets=[_reuse_port_socket(host, port)])
    else:
        server.run()


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock

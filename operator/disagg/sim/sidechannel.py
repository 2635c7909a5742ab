"""The NIXL side channel, simulated: real TCP between a decode and a prefill worker.

vLLM's decode worker handshakes with a prefill worker's side channel
(``VLLM_NIXL_SIDE_CHANNEL_HOST:PORT``) once per *engine id* and caches the peer's agent
(``engine_ttl``, 3600 s): later transfers for that engine id ignore the host and port they are
given.  Handshakes are serialised and an unreachable peer costs the ZMQ timeout (5 s) each.  The
transfer then reads the named blocks from the peer's memory and notifies the peer, which frees
them.  The simulator keeps each of those properties (FAULTS.md) with its own small protocol of
newline-delimited JSON, one connection per exchange:

    hello      D -> P {"op": "hello", "proto"}              P -> D {"ok", "engine_id", "agent"}
    read       D -> P {"op": "read", "engine_id", "agent", "request_id", "block_ids"}
               P -> D {"ok", "contents", "bytes_per_token"} | {"ok": false, "error"}
               (D waits the transfer time)  D -> P {"op": "done"}   P -> D {"ok": true}
    heartbeat  D -> P {"op": "heartbeat", "engine_id", "request_ids"}   P -> D {"ok": true}

``agent`` is a per-process nonce: a prefill worker restarted with the same configured engine id
is a new NIXL agent, and transfers through the cached old one fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from disagg.sim.engine import Engine
from disagg.sim.handoff import PullError, ReadResult
from disagg.sim.request import RemotePrefill

log = logging.getLogger("disagg.sim.sidechannel")
PROTO = "disagg-sim/2"
ENGINE_TTL_S = 3600.0
"""How long a decode worker keeps a peer's agent (vLLM's ``engine_ttl`` default)."""


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


async def _recv(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise ConnectionError("side channel closed by peer")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("side-channel message is not a JSON object")
    return message


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class SideChannelServer:
    """The prefill side: answers handshakes, reads, completion notices and heartbeats."""

    def __init__(self, engine: Engine, host: str, port: int | None, explicit: bool) -> None:
        self.engine = engine
        self.host = host
        self.requested_port = port
        self.explicit = explicit
        self.port = 0
        self.agent = uuid.uuid4().hex
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        bind = "127.0.0.1" if self.host == "localhost" else self.host
        ports = [self.requested_port if self.requested_port is not None else 5600]
        if not self.explicit and ports[0] != 0:
            ports.append(0)  # unset env: fall back to any free port rather than refuse to start
        for i, port in enumerate(ports):
            try:
                self._server = await asyncio.start_server(self._serve, bind, port)
                break
            except OSError as exc:
                if i == len(ports) - 1:
                    msg = f"cannot bind the NIXL side channel {bind}:{port}: {exc}"
                    raise OSError(msg) from None
                log.warning("side-channel port %s busy (%s); using a free port instead", port, exc)
        assert self._server is not None
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        self.engine.side_channel_port = self.port
        log.info("NIXL side channel listening on %s:%d", bind, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        try:
            message = await _recv(reader)
            op, held = message.get("op"), self.engine.held
            if message.get("proto", PROTO) != PROTO:
                await _send(writer, {"ok": False, "error": f"expected {PROTO}"})
            elif op == "hello":
                reply = {"ok": True, "engine_id": self.engine.engine_id, "agent": self.agent}
                await _send(writer, reply)
            elif message.get("engine_id") != self.engine.engine_id:
                error = f"no NIXL agent for engine {message.get('engine_id')!r} here"
                await _send(writer, {"ok": False, "error": error})
            elif op == "heartbeat":
                held.extend([str(r) for r in message.get("request_ids") or []])
                await _send(writer, {"ok": True})
            elif op == "read":
                await self._read(message, reader, writer, peer)
            else:
                await _send(writer, {"ok": False, "error": f"unknown op {op!r}"})
        except (ConnectionError, ValueError, TypeError, asyncio.IncompleteReadError) as exc:
            log.info("side-channel peer %s dropped: %s", peer, exc)
        finally:
            await _close(writer)

    async def _read(
        self,
        message: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        if message.get("agent") != self.agent:
            await _send(writer, {"ok": False, "error": "stale NIXL agent (the peer restarted)"})
            return
        request_id = str(message.get("request_id"))
        try:
            contents = self.engine.held.read([int(b) for b in message.get("block_ids") or []])
        except PullError as exc:
            await _send(writer, {"ok": False, "error": str(exc)})
            return
        per_token = self.engine.timer.kv_bytes(1)
        await _send(writer, {"ok": True, "contents": contents, "bytes_per_token": per_token})
        done = await _recv(reader)
        if done.get("op") == "done":
            self.engine.held.notified(request_id, peer)
            await _send(writer, {"ok": True})


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    agent: str
    expires: float


class NixlAgent:
    """The decode side: handshakes (cached per engine id, serialised), reads, heartbeats."""

    def __init__(self, handshake_timeout_s: float, engine_ttl_s: float = ENGINE_TTL_S) -> None:
        self.handshake_timeout_s = handshake_timeout_s
        self.engine_ttl_s = engine_ttl_s
        self.peers: dict[str, Peer] = {}
        self._handshakes = asyncio.Lock()

    async def _connect(
        self, host: str, port: int, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise PullError(f"cannot reach side channel {host}:{port}: {exc}") from None

    async def peer(self, remote: RemotePrefill) -> Peer:
        """The cached agent of ``remote.engine_id``, or a fresh handshake with its host:port."""
        cached = self.peers.get(remote.engine_id)
        if cached is not None and cached.expires > time.monotonic():
            return cached
        async with self._handshakes:  # vLLM handshakes one peer at a time
            cached = self.peers.get(remote.engine_id)
            if cached is not None and cached.expires > time.monotonic():
                return cached
            return await self._handshake(remote)

    async def _handshake(self, remote: RemotePrefill) -> Peer:
        started = time.monotonic()
        deadline = started + self.handshake_timeout_s
        try:
            reader, writer = await self._connect(remote.host, remote.port, deadline - started)
            try:
                await _send(writer, {"op": "hello", "proto": PROTO})
                left = max(0.01, deadline - time.monotonic())
                reply = await asyncio.wait_for(_recv(reader), left)
            finally:
                await _close(writer)
        except (PullError, ConnectionError, ValueError, TimeoutError) as exc:
            # ZMQ does not fail on a refused connection: it retries until its timeout.
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            raise PullError(
                f"NIXL handshake with {remote.host}:{remote.port} timed out after "
                f"{self.handshake_timeout_s:g}s ({exc})"
            ) from None
        if reply.get("engine_id") != remote.engine_id:
            raise PullError(
                f"remote NIXL agent engine id mismatch: {remote.host}:{remote.port} is "
                f"{reply.get('engine_id')!r}, not {remote.engine_id!r}"
            )
        peer = Peer(remote.host, remote.port, str(reply.get("agent")), started + self.engine_ttl_s)
        self.peers[remote.engine_id] = peer
        return peer

    async def read(self, remote: RemotePrefill, block_ids: list[int]) -> ReadResult:
        peer = await self.peer(remote)
        reader, writer = await self._connect(peer.host, peer.port, self.handshake_timeout_s)
        try:
            await _send(
                writer,
                {
                    "op": "read",
                    "proto": PROTO,
                    "engine_id": remote.engine_id,
                    "agent": peer.agent,
                    "request_id": remote.request_id,
                    "block_ids": block_ids,
                },
            )
            reply = await _recv(reader)
            if not reply.get("ok"):
                raise PullError(str(reply.get("error", "read refused")))
            contents = [c if isinstance(c, int) else None for c in reply["contents"]]
            per_token = int(reply["bytes_per_token"])
        except (ConnectionError, ValueError, KeyError, TypeError) as exc:
            await _close(writer)
            raise PullError(f"side channel failed: {exc}") from None
        except PullError:
            await _close(writer)
            raise

        async def done() -> None:
            try:
                await _send(writer, {"op": "done"})
                await _recv(reader)
            except (ConnectionError, ValueError) as exc:
                log.warning("completion notice to %s:%d failed: %s", peer.host, peer.port, exc)
            finally:
                await _close(writer)

        return ReadResult(contents, per_token, done)

    async def heartbeat(self, remote: RemotePrefill, request_ids: list[str]) -> None:
        peer = self.peers.get(remote.engine_id)
        if peer is None:
            return  # no handshake yet: nothing to extend through
        reader, writer = await self._connect(peer.host, peer.port, 1.0)
        try:
            message = {"op": "heartbeat", "proto": PROTO, "engine_id": remote.engine_id}
            await _send(writer, {**message, "request_ids": request_ids})
            await _recv(reader)
        except (ConnectionError, ValueError) as exc:
            raise PullError(f"heartbeat failed: {exc}") from None
        finally:
            await _close(writer)

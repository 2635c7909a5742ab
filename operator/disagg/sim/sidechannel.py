"""The NIXL side channel, simulated: a real TCP exchange between a decode and a prefill worker.

vLLM's decode worker connects to the prefill worker's side channel
(``VLLM_NIXL_SIDE_CHANNEL_HOST:PORT``), handshakes, then reads the remote blocks with RDMA and
tells the prefill worker it may free them.  The simulator keeps the shape -- a connection to the
advertised host and port, a check that the blocks are still held, a transfer whose duration is
``bytes / link bandwidth``, a completion notice that frees the blocks -- with its own small
protocol of newline-delimited JSON messages on one connection:

    D -> P  {"op": "pull", "proto": "disagg-sim/1", "engine_id", "request_id", "block_ids"}
    P -> D  {"ok": true, "num_tokens", "prompt_digest", "bytes_per_token"}
            or {"ok": false, "error"}
    (D waits the transfer time, simulated)
    D -> P  {"op": "done", "request_id"}
    P -> D  {"ok": true}                   # P frees the blocks

If the decode side never says ``done`` the blocks stay held until their lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
from collections.abc import Sequence
from typing import Any

from disagg.sim.engine import Engine, Puller, PullError
from disagg.sim.request import RemotePrefill, Request

log = logging.getLogger("disagg.sim.sidechannel")
PROTO = "disagg-sim/1"
CONNECT_TIMEOUT_S = 5.0


def prompt_digest(token_ids: Sequence[int]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for tid in token_ids:
        h.update(tid.to_bytes(4, "big"))
    return h.hexdigest()


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


class SideChannelServer:
    """The prefill side: answers pulls for blocks the engine holds."""

    def __init__(self, engine: Engine, host: str, port: int | None, explicit: bool) -> None:
        self.engine = engine
        self.host = host
        self.requested_port = port
        self.explicit = explicit
        self.port = 0
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
        try:
            message = await _recv(reader)
            if message.get("op") != "pull" or message.get("proto") != PROTO:
                await _send(writer, {"ok": False, "error": "expected a disagg-sim/1 pull"})
                return
            engine_id = self.engine.engine_id
            if message.get("engine_id") != engine_id:
                await _send(writer, {"ok": False, "error": f"this is engine {engine_id}"})
                return
            request_id = str(message.get("request_id"))
            block_ids = [int(b) for b in message.get("block_ids") or []]
            try:
                held = self.engine.claim_held(request_id, block_ids)
            except PullError as exc:
                await _send(writer, {"ok": False, "error": str(exc)})
                return
            await _send(
                writer,
                {
                    "ok": True,
                    "num_tokens": held.num_prompt_tokens,
                    "prompt_digest": prompt_digest(held.prompt_ids),
                    "bytes_per_token": self.engine.timer.kv_bytes(1),
                },
            )
            peer = writer.get_extra_info("peername")
            held.notes["pulled_by"] = f"{peer[0]}:{peer[1]}" if peer else "?"
            done = await _recv(reader)
            if done.get("op") == "done" and done.get("request_id") == request_id:
                self.engine.release_held(request_id, "pulled")
                await _send(writer, {"ok": True})
        except (ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            log.info("side-channel peer dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def make_puller(engine: Engine) -> Puller:
    """The decode side: a :data:`disagg.sim.engine.Puller` bound to ``engine``."""

    async def pull(remote: RemotePrefill, request: Request) -> int:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(remote.host, remote.port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise PullError(
                f"cannot reach side channel {remote.host}:{remote.port}: {exc}"
            ) from None
        try:
            await _send(
                writer,
                {
                    "op": "pull",
                    "proto": PROTO,
                    "engine_id": remote.engine_id,
                    "request_id": remote.request_id,
                    "block_ids": list(remote.block_ids),
                },
            )
            reply = await _recv(reader)
            if not reply.get("ok"):
                raise PullError(str(reply.get("error", "pull refused")))
            if reply.get("num_tokens") != request.num_prompt_tokens or reply.get(
                "prompt_digest"
            ) != prompt_digest(request.prompt_ids):
                raise PullError(
                    f"remote KV is for a different prompt ({reply.get('num_tokens')} tokens, "
                    f"this request has {request.num_prompt_tokens})"
                )
            tokens = request.num_prompt_tokens - request.cached_tokens
            moved = int(reply["bytes_per_token"]) * tokens
            await engine.sleep_transfer(engine.timer.transfer_seconds(moved))
            await _send(writer, {"op": "done", "request_id": remote.request_id})
            await _recv(reader)
            return moved
        except (ConnectionError, ValueError, KeyError, TypeError) as exc:
            raise PullError(f"side channel failed: {exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return pull

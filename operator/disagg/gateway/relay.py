"""The SSE relay: a decode worker's stream to the client, as bytes, never silently truncated.

Chunks are forwarded as the worker sent them, cut only at SSE event boundaries (``\n\n`` or
``\r\n\r\n``): a partial event is held back until it is complete, so if the worker dies the
error frame never lands inside one.  A stream that breaks, or ends without ``data: [DONE]``, is
closed with ``data: {"error": {...}}`` and ``data: [DONE]`` -- what vLLM itself sends when its
engine fails mid-stream -- so a client always learns that the answer is incomplete.  TTFT, ITL
and the KV hand-off time are observed here, at the moment bytes leave for the client.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio

from disagg.gateway.metrics import GatewayMetrics
from disagg.gateway.upstream import Stream, UpstreamError

log = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"


def last_boundary(buf: bytes) -> int:
    """End offset of the last complete SSE event in ``buf`` (0 if none)."""
    lf = buf.rfind(b"\n\n")
    crlf = buf.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def sse_error_frame(message: str) -> bytes:
    """An OpenAI-style error event followed by ``[DONE]``."""
    frame = {"error": {"message": message, "type": "upstream_error", "param": None, "code": 502}}
    return b"data: " + json.dumps(frame).encode() + b"\n\n" + SSE_DONE


@dataclass(frozen=True)
class RelayTiming:
    decision: str
    arrival: float
    """When the client request arrived (monotonic)."""
    prefill_done: float
    """When the prefill leg (if any) answered (monotonic)."""


async def relay_stream(
    stream: Stream,
    chunks: AsyncIterator[bytes],
    head: bytes,
    url: str,
    timing: RelayTiming,
    metrics: GatewayMetrics,
    done: Callable[[], None],
) -> AsyncIterator[bytes]:
    """Relay ``head`` and the rest of ``chunks``; ``done`` runs once the stream is over."""
    pending = head
    seen_done = False
    last_event: float | None = None
    try:
        while True:
            cut = last_boundary(pending)
            if cut:
                out, pending = pending[:cut], pending[cut:]
                now = time.monotonic()
                if SSE_DONE.strip() in out:
                    seen_done = True
                events = out.count(b"\n\n") + out.count(b"\r\n\r\n")
                if last_event is None:
                    metrics.ttft.labels(timing.decision).observe(now - timing.arrival)
                    if timing.decision == "disaggregated":
                        metrics.kv_handoff_time.observe(now - timing.prefill_done)
                else:
                    metrics.itl.observe(now - last_event)
                for _ in range(
                    events - 1
                ):  # events that arrived together reach the client together
                    metrics.itl.observe(0.0)
                last_event = now
                yield out
            try:
                pending += await chunks.__anext__()
            except StopAsyncIteration:
                break
        if not seen_done:
            raise UpstreamError("protocol", "the decode worker ended the stream early")
    except UpstreamError as exc:
        log.warning("decode stream from %s broke: %s", url, exc)
        metrics.upstream_errors.labels("decode", "midstream").inc()
        yield sse_error_frame(f"the decode worker failed mid-stream: {exc}")
    finally:
        done()
        metrics.request_duration.labels(timing.decision).observe(time.monotonic() - timing.arrival)
        with anyio.CancelScope(shield=True):
            await stream.aclose()

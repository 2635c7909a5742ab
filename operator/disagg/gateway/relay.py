"""The SSE relay: a decode worker's stream to the client, as bytes, never silently truncated.

Before anything reaches the client, ``read_until_committed`` reads the stream's first events and
holds them back until one carries output (a token, a tool call, a ``finish_reason``).  A stream
that ends first -- with ``[DONE]``, an in-band error, or nothing -- is a failed decode the
gateway can still retry: that is how real vLLM answers a failed KV load under
``kv_load_failure_policy: fail`` (HTTP 200, no token, no error, no ``finish_reason``,
shared/real-vllm/FAULTS.md), and it must not reach a client as an empty answer.

Once committed, chunks are forwarded as the worker sent them, cut only at SSE event boundaries
(``\n\n`` or ``\r\n\r\n``): a partial event is held back until it is complete, so if the
worker dies the error frame never lands inside one.  A stream that breaks, or ends without
``data: [DONE]``, is closed with ``data: {"error": {...}}`` and ``data: [DONE]`` -- what vLLM
itself sends when its engine fails mid-stream -- so a client always learns that the answer is
incomplete.  TTFT, ITL and the KV hand-off time are observed here, at the moment bytes leave.
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


PRE_COMMIT_LIMIT = 1 << 20
"""Bytes held back before the first output event; beyond this the stream is relayed anyway."""
_OUTPUT_FIELDS = ("content", "tool_calls", "reasoning_content", "reasoning", "function_call")


def _carries_output(event: object) -> bool:
    """Whether one parsed SSE payload holds something a client would count as an answer."""
    if not isinstance(event, dict):
        return True  # not a shape we know: do not second-guess the worker
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict):
            return True
        if choice.get("finish_reason") is not None or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(delta.get(k) for k in _OUTPUT_FIELDS):
            return True
    return False


async def read_until_committed(chunks: AsyncIterator[bytes]) -> tuple[bytes, str | None]:
    """Read until an event carries output: ``(held bytes, None)``; or ``(b"", why)`` when the
    stream ended without any (``why``: ``empty`` or ``error`` -- a failed decode to retry)."""
    pending = b""
    parsed = 0
    while True:
        cut = last_boundary(pending)
        for raw in pending[parsed:cut].replace(b"\r\n", b"\n").split(b"\n\n"):
            data = b"".join(
                line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")
            )
            if not data:
                continue
            if data == b"[DONE]":
                return b"", "empty"
            try:
                event = json.loads(data)
            except ValueError:
                return pending, None
            if isinstance(event, dict) and "error" in event:
                return b"", "error"
            if _carries_output(event):
                return pending, None
        parsed = cut
        if len(pending) > PRE_COMMIT_LIMIT:
            return pending, None
        try:
            pending += await chunks.__anext__()
        except StopAsyncIteration:
            return b"", "empty"


def sse_error_frame(message: str) -> bytes:
    """An OpenAI-style error event followed by ``[DONE]``."""
    frame = {"error": {"message": message, "type": "upstream_error", "param": None, "code": 502}}
    return b"data: " + json.dumps(frame).encode() + b"\n\n" + SSE_DONE


@dataclass(frozen=True)
class RelayTiming:
    decision: str
    arrival: float
    """When the client request arrived (monotonic)."""
    prefill_done: float | None
    """When the prefill leg answered (monotonic), if the decode worker loads its KV."""


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
                    if timing.prefill_done is not None:
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

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

from disagg.gateway.metrics import GatewayMetrics, Tally
from disagg.gateway.requests import loads
from disagg.gateway.routing.frozen import fast_init
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


async def read_until_committed(stream: Stream) -> tuple[bytes, str | None]:
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
                event = loads(data)
            except ValueError:
                return pending, None
            if isinstance(event, dict) and "error" in event:
                return b"", "error"
            if _carries_output(event):
                return pending, None
        parsed = cut
        if len(pending) > PRE_COMMIT_LIMIT:
            return pending, None
        chunk = await stream.next_chunk()
        if chunk is None:
            return b"", "empty"
        pending += chunk


def sse_error_frame(message: str) -> bytes:
    """An OpenAI-style error event followed by ``[DONE]``."""
    frame = {"error": {"message": message, "type": "upstream_error", "param": None, "code": 502}}
    return b"data: " + json.dumps(frame).encode() + b"\n\n" + SSE_DONE


@fast_init
@dataclass(frozen=True)
class RelayTiming:
    decision: str
    arrival: float
    """When the client request arrived (monotonic)."""
    prefill_done: float | None
    """When the prefill leg answered (monotonic), if the decode worker loads its KV."""


class SSERelay:
    """The relay's state, driven by whoever moves the bytes: ``feed`` what the worker sent and
    forward what it returns (complete events only), then forward ``end``'s closing frame;
    ``finish`` runs once the stream is over either way.  The HTTP server drives it from the
    worker connection's callbacks (no coroutine per token); ``relay_stream`` drives it as an
    async iterator."""

    def __init__(
        self, url: str, timing: RelayTiming, metrics: GatewayMetrics, done: Callable[[], None]
    ) -> None:
        self.url = url
        self.timing = timing
        self.metrics = metrics
        self._itl = Tally(metrics.itl)
        self._done: Callable[[], None] | None = done
        self._pending = b""
        self._seen_done = False
        self._last_event: float | None = None

    def feed(self, data: bytes) -> bytes:
        """The complete events of what arrived so far (b"" while an event is still partial)."""
        pending = self._pending + data if self._pending else data
        if pending.endswith(b"\n\n"):  # whole events, the usual case: no scan for the cut
            out, self._pending = pending, b""
        else:
            cut = last_boundary(pending)
            if not cut:
                self._pending = pending
                return b""
            out, self._pending = pending[:cut], pending[cut:]
        now = time.monotonic()
        if not self._seen_done and _DONE in out:
            self._seen_done = True
        last = self._last_event
        if last is None:
            timing = self.timing
            self.metrics.ttft.labels(timing.decision).observe(now - timing.arrival)
            if timing.prefill_done is not None:
                self.metrics.kv_handoff_time.observe(now - timing.prefill_done)
        else:
            self._itl.add(now - last)
        events = out.count(b"\n\n")
        if b"\r" in out:
            events += out.count(b"\r\n\r\n")
        if events > 1:  # events that arrived together reach the client together: gaps of 0
            self._itl.add(0.0, events - 1)
        self._last_event = now
        return out

    def end(self, error: UpstreamError | None) -> bytes:
        """What closes the stream: b"" after ``[DONE]``, else an error frame and ``[DONE]``."""
        if error is None and self._seen_done:
            return b""
        if error is None:
            error = UpstreamError("protocol", "the decode worker ended the stream early")
        log.warning("decode stream from %s broke: %s", self.url, error)
        self.metrics.upstream_errors.labels("decode", "midstream").inc()
        return sse_error_frame(f"the decode worker failed mid-stream: {error}")

    def finish(self) -> None:
        """Release the request's slot and record its duration (once)."""
        done, self._done = self._done, None
        if done is None:
            return
        self._itl.flush()
        done()
        timing = self.timing
        self.metrics.request_duration.labels(timing.decision).observe(
            time.monotonic() - timing.arrival
        )


_DONE = SSE_DONE.strip()


@dataclass
class RelaySource:
    """A committed decode stream: the worker's answer, the events held back until its first
    output (``head``), and the relay that forwards the rest."""

    stream: Stream
    """Already read up to ``head`` (``read_until_committed``)."""
    head: bytes
    relay: SSERelay


async def relay_stream(source: RelaySource) -> AsyncIterator[bytes]:
    """Relay ``head`` and the rest of the stream as an async iterator (the ASGI path)."""
    relay = source.relay
    try:
        out = relay.feed(source.head)
        if out:
            yield out
        try:
            while (data := await source.stream.next_chunk()) is not None:
                out = relay.feed(data)
                if out:
                    yield out
            tail = relay.end(None)
        except UpstreamError as exc:
            tail = relay.end(exc)
        if tail:
            yield tail
    finally:
        relay.finish()
        source.stream.release()

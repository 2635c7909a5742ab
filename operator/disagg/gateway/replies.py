"""What the flow hands back to the HTTP layer: a whole answer or an open stream.

The flow never touches Starlette; ``app`` turns these into responses and adds the request's
route headers to every one of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from disagg.gateway.requests import error_body

JSON = "application/json"


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamReply:
    chunks: AsyncIterator[bytes]
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


def upstream_failure(message: str, status: int = 502) -> Reply:
    return Reply(status, error_body(message, "upstream_error", status))


def retryable(status: int) -> bool:
    """A worker status another attempt may fix (the request itself is fine)."""
    return status >= 500 or status in (408, 429)

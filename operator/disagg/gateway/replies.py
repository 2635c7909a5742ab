"""What the flow hands back to the HTTP layer: a whole answer or an open stream.

The flow never touches an HTTP server; ``front`` (the completion routes on the wire) and ``app``
(everything else, ASGI) turn these into responses and add the request's route headers to every
one of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from disagg.gateway.requests import error_body

if TYPE_CHECKING:
    from disagg.gateway.relay import RelaySource

JSON = "application/json"


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamReply:
    chunks: AsyncIterator[bytes]
    """The relay as an async iterator (the ASGI path; not started until iterated)."""
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    source: RelaySource | None = None
    """What the HTTP server pipes without ``chunks`` (``front``); set by the decode leg."""


def upstream_failure(message: str, status: int = 502) -> Reply:
    return Reply(status, error_body(message, "upstream_error", status))


def retryable(status: int) -> bool:
    """A worker status another attempt may fix (the request itself is fine)."""
    return status >= 500 or status in (408, 429)

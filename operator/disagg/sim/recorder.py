"""What each request received and what the simulator did with it, for tests to assert on.

``GET /sim/requests`` returns the most recent entries, oldest first.  Each entry holds the
method, path, headers (``authorization`` redacted), the body as JSON (or ``body_text`` when it
was not JSON) and an ``outcome`` the handler fills in as the request progresses: the engine
request id, how the prompt's KV was obtained (``local``, ``remote``, ``fallback``), why a pull
failed, token counts, the finish reason and the ``kv_transfer_params`` it returned.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from typing import Any

REDACTED = {"authorization", "proxy-authorization", "cookie", "x-api-key"}


class Recorder:
    def __init__(self, limit: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=max(1, limit))
        self._seq = itertools.count(1)

    def start(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": next(self._seq),
            "time": time.time(),
            "method": method,
            "path": path,
            "headers": {k: ("<redacted>" if k in REDACTED else v) for k, v in headers.items()},
            "x_request_id": headers.get("x-request-id"),
            "outcome": {},
        }
        try:
            entry["body"] = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            entry["body"] = None
            entry["body_text"] = raw.decode("utf-8", "replace")[:4096]
        self._entries.append(entry)
        return entry

    def list(
        self, x_request_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        entries = [e for e in self._entries if x_request_id in (None, e["x_request_id"])]
        return entries[-limit:] if limit else entries

    def clear(self) -> None:
        self._entries.clear()

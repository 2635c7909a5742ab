"""A tiny HTTPS client for the cluster's own health checks, using the admin certificate.

The lifecycle code must not depend on the project's virtualenv (``python3 -m testbed.cluster`` works
with the system interpreter), so it speaks to the apiserver with the standard library only.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from .config import Settings


class Deadline(TimeoutError):
    """A condition did not hold before its deadline; the message says which and the last state."""


class ApiClient:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.server
        ctx = ssl.create_default_context(cafile=str(settings.pki / "ca.crt"))
        ctx.load_cert_chain(str(settings.pki / "admin.crt"), str(settings.pki / "admin.key"))
        self._ctx = ctx

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        except (urllib.error.URLError, OSError) as err:
            return 0, str(err)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)


def wait_until(
    what: str, probe: Callable[[], tuple[bool, object]], timeout: float, interval: float = 0.25
) -> object:
    """Poll ``probe`` (returns (done, detail)) until done or the deadline; returns the detail."""
    deadline = time.monotonic() + timeout
    detail: object = None
    while True:
        done, detail = probe()
        if done:
            return detail
        if time.monotonic() >= deadline:
            raise Deadline(f"{what}: not true after {timeout:.0f}s (last: {str(detail)[:300]})")
        time.sleep(interval)

"""A timeout that costs nothing to restart: for the gateway's per-connection timers.

A connection's header timeout, its keep-alive timeout and a worker stream's idle-read timeout
all restart far more often than they expire -- per request, per response, per token.  A timer
created and cancelled each time was visible in the profile (a heap push and a handle per
restart), so ``LazyDeadline`` keeps one timer per quiet period instead: restarting only stamps
the time (``since``), stopping clears the stamp, and when the timer fires it calls ``expired``
if the stamp is as old as the timeout, re-arms for what is left if it is not, and lapses if the
deadline was stopped (the next ``start`` arms it again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LazyDeadline:
    """``expired`` runs once ``seconds`` have passed since ``since`` without a ``stop``."""

    __slots__ = ("_expired", "_loop", "_timer", "seconds", "since")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, expired: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None
        self.seconds = seconds
        self.since: float | None = None
        """When the wait began (loop time); None: stopped.  The owner may move it forward
        itself (a stream's data) -- an attribute write, the cheapest restart."""

    def start(self) -> None:
        """(Re)start the wait now."""
        self.since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self.seconds, self._fire)

    def stop(self) -> None:
        """No timeout until the next ``start`` (the pending timer, if any, lapses)."""
        self.since = None

    def cancel(self) -> None:
        """Stop, and drop the pending timer too: for good (the connection is gone)."""
        self.since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        since = self.since
        if since is None:
            return
        left = since + self.seconds - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._fire)
            return
        self.since = None
        self._expired()

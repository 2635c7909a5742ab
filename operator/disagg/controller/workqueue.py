"""A work queue of object keys with de-duplication and delays (client-go's, in asyncio).

Watch events only *enqueue* a key; a fixed set of workers reconciles keys.  So a
burst of events for one object (a rollout touches its Deployment and pods many
times) becomes one reconcile, the number of concurrent reconciles — and so the
load on the API server — is bounded by the worker count, and an operator restart
that sees N objects at once queues N keys instead of starting N reconciles.

Rules: a key is never processed by two workers at once; a key added while it is
being processed is processed again afterwards; a key added with a delay keeps the
earliest time it was asked for.  Among the keys that are due, a lower ``priority(key)``
goes first (FIFO within one priority): the operator finishes what it started —
children, then objects it has already written for — before it starts on new ones, so
after a burst of creates each object is done early instead of all of them at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, priority: Callable[[K], int] = lambda _: 0) -> None:
        self._priority = priority
        self._ready: dict[int, deque[K]] = {}
        """Due keys by priority (their ``_due`` entry stays until they are taken)."""
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._processing: set[K] = set()
        self._again: dict[K, float] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._due)

    @property
    def processing(self) -> int:
        return len(self._processing)

    def add(self, key: K, delay: float = 0.0) -> None:
        """Reconcile ``key`` in ``delay`` seconds (or sooner, if already asked for sooner)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        if key in self._processing:
            self._again[key] = min(when, self._again.get(key, when))
            return
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        self._wakeup.set()

    async def get(self) -> K:
        """The next due key; it counts as being processed until :meth:`done`."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise asyncio.CancelledError
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                when, _, key = heapq.heappop(self._heap)
                if self._due.get(key) == when:  # else superseded by an earlier add
                    self._ready.setdefault(self._priority(key), deque()).append(key)
            for level in sorted(self._ready):
                queue = self._ready[level]
                while queue:
                    key = queue.popleft()
                    if key in self._due and self._due[key] <= now:
                        del self._due[key]
                        self._processing.add(key)
                        return key
            self._wakeup.clear()
            timeout = self._heap[0][0] - loop.time() if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def done(self, key: K) -> None:
        self._processing.discard(key)
        again = self._again.pop(key, None)
        if again is not None:
            loop = asyncio.get_running_loop()
            self.add(key, max(0.0, again - loop.time()))

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

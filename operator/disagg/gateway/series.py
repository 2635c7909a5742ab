"""The gateway's Prometheus series kinds: prometheus-client's, made cheap to update.

The request path updates a few dozen series per request, and the gateway had to use no more CPU
per request than a Rust router (issue 16), so an update costs as little as the exposition allows;
the text on ``/metrics`` stays exactly prometheus-client's (a test compares them).

* **No lock per update.**  One gateway process is one asyncio thread, and nothing else in it
  updates these series (the KV-event subscriber's are the library's own, updated in its tasks on
  the same loop), so a value here is a plain float (``_Plain``) where prometheus-client takes a
  mutex per ``inc``/``set``, and a counter or histogram adds to it in place.  With several
  processes (``workers``) values live in shared files and keep the library's class.
* **Read, not pushed.**  A gauge that mirrors state the gateway holds anyway can be read when
  scraped (``Reading``) instead of set at every change.  With shared files a scrape cannot call
  into the other processes, so there the owners still set them.
* **Children cached**, and a stream's inter-token gaps added without a call per gap into the
  values (``Tally``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import values

#: Whether values live in per-process files (``PROMETHEUS_MULTIPROC_DIR`` when the library was
#: imported: ``workers``); then every value is the library's and every gauge is set by its owner.
SHARED_FILES: bool = values.ValueClass._multiprocess


class _Plain:
    """A metric's value as a float without a lock (the library's ``MutexValue`` less its mutex)."""

    __slots__ = ("_exemplar", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


class Reading:
    """A gauge's value read from the gateway's own state when scraped; it has no ``set``."""

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read

    def get(self) -> float:
        return float(self.read())

    def get_exemplar(self) -> None:
        return None


class _CachedLabels:
    """``labels()`` from a dict: prometheus-client validates and locks on every call, which the
    profile showed on the request path (several calls per request); a child, once made, is
    reused until ``remove``/``clear``."""

    _plain = False
    """True for a child whose values are ``_Plain`` floats: its updates need no call into them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children_cache: dict[tuple[Any, ...], Any] = {}

    def labels(self, *values: Any) -> Any:
        child = self._children_cache.get(values)
        if child is None:
            child = self._children_cache[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self._children_cache.clear()
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self._children_cache.clear()
        super().clear()  # type: ignore[misc]


# The request path updates a few dozen series per request (a histogram observation per relayed
# event).  prometheus-client checks on every update that the object is a child (two calls) and
# walks a histogram's buckets in Python; the overrides below do the same update with a C bisect,
# adding to a ``_Plain`` float in place, or with ``workers`` through one call into the library's
# shared-file value.  A parent with labels has no value: its calls go to the library, which raises
# as before.


class Counter(_CachedLabels, prometheus_client.Counter):  # type: ignore[misc]
    def _metric_init(self) -> None:
        super()._metric_init()
        if not SHARED_FILES:
            self._value = _Plain()
            self._plain = True

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if self._plain and amount >= 0 and not exemplar:
            self._value._value += amount
            return
        value = self.__dict__.get("_value")
        if value is None or exemplar or amount < 0:
            super().inc(amount, exemplar)
            return
        value.inc(amount)


class Gauge(_CachedLabels, prometheus_client.Gauge):  # type: ignore[misc]
    def _metric_init(self) -> None:
        super()._metric_init()
        if not SHARED_FILES:
            self._value = _Plain()

    def set(self, value: float) -> None:
        current = self.__dict__.get("_value")
        if current is None or self._is_most_recent:
            super().set(value)
            return
        current.set(float(value))


class Histogram(_CachedLabels, prometheus_client.Histogram):  # type: ignore[misc]
    def _metric_init(self) -> None:
        super()._metric_init()
        if not SHARED_FILES:
            self._sum = _Plain()
            self._buckets = [_Plain() for _ in self._upper_bounds]
            self._plain = True

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        # The first bucket whose upper bound is >= amount (the library's ``amount <= bound``).
        if self._plain and amount == amount and not exemplar:  # not NaN
            self._sum._value += amount
            self._buckets[bisect_left(self._upper_bounds, amount)]._value += 1.0
            return
        try:
            buckets = self._buckets
        except AttributeError:  # a parent: the library says why it cannot
            buckets = None
        if buckets is None or exemplar or amount != amount:  # ... an exemplar, NaN
            super().observe(amount, exemplar)
            return
        self._sum.inc(amount)
        buckets[bisect_left(self._upper_bounds, amount)].inc(1)

    def add_counts(self, counts: list[int], total: float) -> None:
        """Observations gathered elsewhere (``Tally``): ``counts[i]`` in bucket ``i``, summing
        to ``total``."""
        buckets = self._buckets
        for i, count in enumerate(counts):
            if count:
                buckets[i].inc(count)
        self._sum.inc(total)


class Tally:
    """A histogram's observations gathered locally and added to it in one go (``flush``).

    A relayed stream observes an inter-token gap per event, each a call, a bucket search and two
    updates of shared-file values (``workers``); a tally makes that a bucket search and a list
    increment, and ``flush`` (at the end of the stream, and every ``FLUSH_EVERY`` events of a long
    one) adds the counts.  A scrape mid-stream misses at most that many gaps of the stream.
    Where the histogram's values are ``_Plain`` floats, adding to them is as cheap as to a list:
    ``Tally(histogram)`` is then a ``_DirectTally``, which adds each gap at once."""

    FLUSH_EVERY = 64
    __slots__ = ("bounds", "counts", "histogram", "pending", "total")

    def __new__(cls, histogram: Histogram) -> Tally:
        return object.__new__(_DirectTally if histogram._plain else cls)

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds: list[float] = histogram._upper_bounds
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.pending = 0

    def add(self, amount: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, amount)] += times
        self.total += amount * times
        self.pending += times
        if self.pending >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.histogram.add_counts(self.counts, self.total)
            self.counts = [0] * len(self.bounds)
            self.total = 0.0
            self.pending = 0


class _DirectTally(Tally):
    """A tally of a histogram whose values are plain floats: nothing is held back."""

    __slots__ = ("buckets", "sum")

    def __init__(self, histogram: Histogram) -> None:
        self.bounds = histogram._upper_bounds
        self.buckets: list[_Plain] = histogram._buckets
        self.sum: _Plain = histogram._sum

    def add(self, amount: float, times: int = 1) -> None:
        self.buckets[bisect_left(self.bounds, amount)]._value += times
        self.sum._value += amount * times

    def flush(self) -> None:
        pass

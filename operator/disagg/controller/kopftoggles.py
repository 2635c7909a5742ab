"""kopf's start-up gate, made linear in the number of listed objects.

kopf holds every handler back until the index handlers have seen the initial listing of
every indexed kind.  It does that with a ``ToggleSet(all)``: one toggle per listed object,
dropped once the object is indexed, while every object's worker waits for the whole set
to turn on.  kopf (1.38-1.45) wakes *every* waiting worker on each toggle made or dropped
and each re-checks *every* toggle, so a start costs O(N^2) wake-ups and O(N^3) checks.
Measured with 300 DisaggDeployments (about 4,500 listed objects): the operator's resume
took 105-167 s, a quarter of it in ``asyncio`` scheduling those wake-ups; a busy cluster's
foreign ConfigMaps and Services count too, since kopf lists every object of a watched kind.

:class:`CountingToggleSet` keeps the same contract — the same methods, the same
``all``/``any`` semantics, toggles that share the set's condition — but counts the
toggles that are on and wakes the waiters of one state only when the set's state changes
to it: O(1) per toggle made, dropped or turned, O(N) in all.  :func:`install` puts it in
kopf's place when kopf's internals are the ones it was written against, and otherwise
leaves kopf alone (and says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

try:
    from kopf._cogs.aiokits import aiotoggles
except ImportError:  # pragma: no cover - a kopf without this module: nothing to replace
    aiotoggles = None  # type: ignore[assignment]


if aiotoggles is not None:

    class _CountedToggle(aiotoggles.Toggle):
        """A toggle that tells its set when it turns."""

        def __init__(self, state: bool, *, name: str | None, owner: CountingToggleSet) -> None:
            super().__init__(state, name=name, condition=owner._condition)
            self._owner = owner

        async def turn_to(self, __state: bool) -> None:
            state = bool(__state)
            async with self._condition:
                if state != self._state and self in self._owner._toggles:
                    self._owner._on += 1 if state else -1
                self._state = state
                self._condition.notify_all()  # waiters of this one toggle
            self._owner._settle()

    class CountingToggleSet(aiotoggles.ToggleSet):
        """kopf's ``ToggleSet`` for ``all``/``any`` with a count instead of a scan."""

        def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
            super().__init__(fn)
            self._fn = fn
            self._on = 0
            self._reached = {True: asyncio.Event(), False: asyncio.Event()}
            self._settle()

        def is_on(self) -> bool:
            total = len(self._toggles)
            if self._fn is all:
                return self._on == total
            if self._fn is any:
                return self._on > 0
            return bool(self._fn(toggle.is_on() for toggle in self._toggles))

        def _settle(self) -> None:
            state = self.is_on()
            self._reached[state].set()
            self._reached[not state].clear()

        async def wait_for(self, __state: bool) -> None:
            state = bool(__state)
            while self.is_on() != state:
                await self._reached[state].wait()

        async def make_toggle(
            self, __val: bool = False, *, name: str | None = None
        ) -> aiotoggles.Toggle:
            toggle = _CountedToggle(bool(__val), name=name, owner=self)
            self._toggles.add(toggle)
            self._on += 1 if toggle.is_on() else 0
            self._settle()
            return toggle

        async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
            await self.drop_toggles([toggle])

        async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
            for toggle in list(toggles):
                if toggle in self._toggles:
                    self._toggles.discard(toggle)
                    self._on -= 1 if toggle.is_on() else 0
            self._settle()


def install() -> bool:
    """Replace kopf's ``ToggleSet`` (before ``kopf.operator`` starts); False if not done."""
    if aiotoggles is None:
        return False
    probe = aiotoggles.ToggleSet(all)
    expected = ("_toggles", "_condition", "make_toggle", "drop_toggle", "drop_toggles")
    if not all(hasattr(probe, attr) for attr in expected) or not isinstance(probe._toggles, set):
        log.info("kopf's ToggleSet is not the one expected: its start-up gate is left as is")
        return False
    aiotoggles.ToggleSet = CountingToggleSet  # type: ignore[misc]
    return True

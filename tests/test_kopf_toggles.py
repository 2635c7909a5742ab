"""The counting start-up gate behaves as kopf's own ToggleSet (same states, same waits)."""

from __future__ import annotations

import asyncio
import random

import pytest
from kopf._cogs.aiokits import aiotoggles

from disagg.controller.kopftoggles import CountingToggleSet

ORIGINAL = aiotoggles.ToggleSet


@pytest.mark.parametrize("fn", [all, any])
async def test_random_operations_give_kopfs_states(fn: object) -> None:
    rng = random.Random(7)
    ours, theirs = CountingToggleSet(fn), ORIGINAL(fn)  # type: ignore[arg-type]
    pairs: list[tuple[aiotoggles.Toggle, aiotoggles.Toggle]] = []
    for _ in range(400):
        action = rng.random()
        if action < 0.4 or not pairs:
            value = rng.random() < 0.5
            pairs.append((await ours.make_toggle(value), await theirs.make_toggle(value)))
        elif action < 0.7:
            a, b = pairs.pop(rng.randrange(len(pairs)))
            await ours.drop_toggle(a)
            await theirs.drop_toggle(b)
        else:
            a, b = rng.choice(pairs)
            value = rng.random() < 0.5
            await a.turn_to(value)
            await b.turn_to(value)
        assert ours.is_on() == theirs.is_on()
        assert len(ours) == len(theirs)


async def test_waiters_are_released_when_the_last_toggle_is_dropped() -> None:
    gate = CountingToggleSet(all)
    toggles = [await gate.make_toggle(name=f"object-{i}") for i in range(1000)]
    waiters = [asyncio.create_task(gate.wait_for(True)) for _ in range(1000)]
    for toggle in toggles[:-1]:
        await gate.drop_toggle(toggle)
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters), "released before every object was indexed"
    await gate.drop_toggle(toggles[-1])
    await asyncio.wait_for(asyncio.gather(*waiters), 5)


async def test_a_toggle_turned_on_counts_and_a_dropped_one_no_longer() -> None:
    paused = CountingToggleSet(any)
    flag = await paused.make_toggle(False)
    assert paused.is_off()
    waiter = asyncio.create_task(paused.wait_for(True))
    await flag.turn_to(True)
    await asyncio.wait_for(waiter, 5)
    await paused.drop_toggles([flag])
    assert paused.is_off()
    await asyncio.wait_for(paused.wait_for(False), 5)

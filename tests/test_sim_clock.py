"""The simulator's step timeline: deadlines kept by a timerfd, and the token frames it streams."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest

from disagg.sim import protocol
from disagg.sim.clock import DeadlineSleeper, sleep_until
from disagg.sim.serving import _sse, token_framer


async def test_a_deadline_is_never_left_early_and_the_loop_serves_others_meanwhile() -> None:
    sleeper = DeadlineSleeper()
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    other = asyncio.create_task(other_work())
    try:
        for delay in (0.0037, 0.0046, 0.0121):
            deadline = time.monotonic() + delay
            await sleeper.until(deadline)
            assert time.monotonic() >= deadline
        await sleeper.until(time.monotonic() - 1)  # a deadline in the past returns at once
    finally:
        other.cancel()
        sleeper.close()
    assert ticks >= 2  # the loop ran other tasks while the sleeper waited
    await sleep_until(time.monotonic() + 0.002)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_on_linux_the_sleeper_uses_a_timerfd() -> None:
    sleeper = DeadlineSleeper()
    try:
        assert sleeper.precise
    finally:
        sleeper.close()


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("usage", [False, True])
def test_token_frames_are_byte_for_byte_the_whole_chunk_body(chat: bool, usage: bool) -> None:
    body = {"model": "m", "stream": True, "max_tokens": 4}
    if chat:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    if usage:
        body["stream_options"] = {"include_usage": True}
    parsed = protocol.parse_request(body, chat, ("m",), 4096, 16)
    framed = token_framer(parsed, "cmpl-1", 1700000000)
    for text in (" the", ' "quoted"\n', " é ünïcode", ""):
        expected = _sse(protocol.chunk_body(parsed, "cmpl-1", 1700000000, text, None))
        assert framed(text) == expected
        payload = json.loads(framed(text).removeprefix("data: "))
        choice = payload["choices"][0]
        assert (choice["delta"]["content"] if chat else choice["text"]) == text

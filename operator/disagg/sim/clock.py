"""Sleeping until an absolute deadline, to the tenth of a millisecond, inside an event loop.

A simulated engine step of an H200 decode lasts ~5 ms, and a client measures the gaps between
its tokens to the tenth of a millisecond.  asyncio's own timers cannot keep that: the selector
rounds every wait up to a whole millisecond (``epoll_wait`` takes milliseconds), and uvloop
(which uvicorn picks when it is installed, as on the GPU machine) keeps a millisecond clock and
rounds its timers to it.  A step of 4.6 ms then ends anywhere between ~4 and ~6 ms, and the
client sees that jitter as a wide ITL p50-p90 spread the real engine does not have.

On Linux the wait is a ``timerfd`` armed for the deadline on ``CLOCK_MONOTONIC`` (the clock
behind ``time.monotonic()``) and watched by the loop like any socket: the kernel's high-resolution
timer wakes the loop on time (a few tens of microseconds late at most, the timer slack), the loop
serves every other task in the meantime, and nothing spins.  Elsewhere -- or if the call fails
-- it falls back to ``asyncio.sleep``, millisecond-coarse but correct on average.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
import time

log = logging.getLogger("disagg.sim.clock")

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        )
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class DeadlineSleeper:
    """One engine's precise sleeps: ``await sleeper.until(deadline)`` (``time.monotonic()``
    seconds).  Owns one timerfd for its life; ``close()`` releases it."""

    def __init__(self) -> None:
        self._fd = -1
        if _LIBC is not None and os.environ.get("DISAGG_SIM_COARSE_TIMER") != "1":
            fd = _LIBC.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
            else:
                log.warning("timerfd_create failed (errno %d): coarse timers", ctypes.get_errno())

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    async def until(self, deadline: float) -> None:
        """Return at ``deadline`` (at once, after one turn of the loop, if it has passed)."""
        if deadline <= time.monotonic():
            await asyncio.sleep(0)
            return
        if self._fd < 0 or not self._arm(deadline):
            await asyncio.sleep(deadline - time.monotonic())
            return
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(self._fd, 8)  # the expiration count: drains the fd
            if not fired.done():
                fired.set_result(None)

        loop.add_reader(self._fd, on_readable)
        try:
            await fired
        finally:
            loop.remove_reader(self._fd)

    def _arm(self, deadline: float) -> bool:
        assert _LIBC is not None
        seconds = int(deadline)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, int((deadline - seconds) * 1e9)))
        done: int = _LIBC.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None)
        return done == 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def sleep_until(deadline: float) -> None:
    """One precise sleep with a timer of its own (a request's share of TTFT, say)."""
    sleeper = DeadlineSleeper()
    try:
        await sleeper.until(deadline)
    finally:
        sleeper.close()

"""Clocks, injected into every runtime object that needs time.

Deadlines use the monotonic clock; wall time is only for display. Tests use
`FakeClock` and move time by hand, so nothing patches `time.time`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time and sleeping, as the runtime sees them."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for display and records meant for people."""
        ...

    async def sleep(self, delay: float) -> None:
        """Sleep for `delay` seconds of this clock."""
        ...


class SystemClock:
    """The real clocks of this machine."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))


class FakeClock:
    """A clock that moves only when told to; `sleep` waits for `advance`."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1.7e9) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + delay, fut))
        await fut

    def advance(self, delta: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._now += delta
        due = [(at, fut) for at, fut in self._sleepers if at <= self._now]
        self._sleepers = [(at, fut) for at, fut in self._sleepers if at > self._now]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

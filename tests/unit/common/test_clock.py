"""FakeClock: time moves only when told, and sleepers wake in order."""

from __future__ import annotations

import asyncio

from servergroup.common.clock import FakeClock


async def test_sleepers_wake_only_when_time_reaches_them() -> None:
    clock = FakeClock(start=10.0)
    woke: list[str] = []

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("short", 1.0)), asyncio.create_task(sleeper("long", 5.0))]
    await asyncio.sleep(0)
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == ["short"]
    assert clock.monotonic() == 11.0
    clock.advance(10.0)
    await asyncio.gather(*tasks)
    assert woke == ["short", "long"]
    assert clock.wall() - clock.monotonic() == 1.7e9


async def test_zero_sleep_does_not_wait_for_advance() -> None:
    clock = FakeClock()
    await asyncio.wait_for(clock.sleep(0), 1.0)

"""`Background`: tasks kept while they run, a failure reported once, cancel ends them all."""

from __future__ import annotations

import asyncio

import pytest

from servergroup.common.component import Background, cancel_and_wait

pytestmark = pytest.mark.timeout(10)


async def test_tasks_are_kept_and_failures_reported() -> None:
    failures: list[BaseException] = []
    tasks = Background(failures.append)
    release = asyncio.Event()

    async def waits() -> None:
        await release.wait()

    async def fails() -> None:
        raise ValueError("broken")

    kept = tasks.spawn(waits())
    failed = tasks.spawn(fails())
    await asyncio.wait([failed])
    await asyncio.sleep(0)  # done callbacks run on the next step
    assert [str(e) for e in failures] == ["broken"]
    assert len(tasks) == 1  # the failed one is gone, the waiting one kept
    release.set()
    await kept
    await asyncio.sleep(0)
    assert len(tasks) == 0
    assert len(failures) == 1  # a clean end is no failure


async def test_cancel_ends_every_task_and_is_no_failure() -> None:
    failures: list[BaseException] = []
    tasks = Background(failures.append)
    started = [tasks.spawn(asyncio.sleep(60)) for _ in range(3)]
    adopted_done: list[bool] = []
    adopted = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    tasks.adopt(adopted, lambda t: adopted_done.append(t.cancelled()))
    await asyncio.sleep(0)  # every task running
    await tasks.cancel()
    await asyncio.sleep(0)  # done callbacks run on the next step
    assert all(t.cancelled() for t in started)
    assert adopted_done == [True]  # the adopted task's own callback, not on_failure
    assert failures == []
    assert len(tasks) == 0


async def test_cancel_and_wait_waits_for_each() -> None:
    ended: list[str] = []

    async def cleans_up(name: str) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.append(name)

    loop = asyncio.get_running_loop()
    running = [loop.create_task(cleans_up(n)) for n in ("a", "b")]
    await asyncio.sleep(0)  # both inside their `try`
    await cancel_and_wait(running)
    assert sorted(ended) == ["a", "b"]

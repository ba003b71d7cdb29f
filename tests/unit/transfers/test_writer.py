"""`RecordWriter` on the in-memory store: paced writes on a lease, failures logged once.

The real etcd (frozen in the middle of a real transfer) is in
tests/integration/api/test_transfers.py; these check the writer's own rules
quickly, with short intervals.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from servergroup.common.clock import SystemClock
from servergroup.coordination import Lease, MemoryCoordinator, MemoryStore
from servergroup.transfers import record as rec
from servergroup.transfers.recorder import RecordWriter

pytestmark = pytest.mark.timeout(30)

KEY = "transfers/10.0.0.1:18383"


def writer(c: MemoryCoordinator, **kwargs: object) -> tuple[RecordWriter, list[int]]:
    renders: list[int] = []

    def render() -> bytes:
        renders.append(1)
        return str(len(renders)).encode()

    w = RecordWriter(
        c,
        KEY,
        render,
        clock=SystemClock(),
        pacer=rec.WritePacer(interval=0.05, heartbeat_interval=10.0),
        **kwargs,  # type: ignore[arg-type]
    )
    return w, renders


async def until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_news_is_written_at_most_once_per_interval_then_the_final_record() -> None:
    store = MemoryStore()
    c = MemoryCoordinator(store)
    w, _ = writer(c)
    began = time.monotonic()
    w.start()
    for _ in range(100):
        w.changed()
        await asyncio.sleep(0.002)
    assert await w.finish()
    elapsed = time.monotonic() - began
    kv = await c.get(KEY)
    assert kv is not None
    assert kv.lease != 0  # goes when its retention ends
    # The first write, one per interval, the final one.
    assert 2 <= kv.version <= 2 + int(elapsed / 0.05) + 1
    assert kv.version < 50


async def test_a_store_down_is_logged_once_and_writing_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "servergroup.transfers")
    store = MemoryStore()
    c = MemoryCoordinator(store)
    store.available = False
    w, _ = writer(c)
    w.start()
    for attempt in range(1, 6):  # several attempts fail
        w.changed()
        await until(lambda n=attempt: _true(w.attempts >= n))
    assert w.failing
    store.available = True
    w.changed()
    await until(lambda: c.get(KEY))
    assert await w.finish()
    text = [r.getMessage() for r in caplog.records]
    assert sum("not written" in t for t in text) == 1, text
    assert sum("written again" in t for t in text) == 1, text


async def test_a_store_that_never_answers_does_not_hold_the_end() -> None:
    class Hanging(MemoryCoordinator):
        async def grant(self, ttl: int) -> Lease:
            await asyncio.Event().wait()
            raise AssertionError("never answered")

    w, _ = writer(Hanging(MemoryStore()), write_timeout=0.1)
    w.start()
    w.changed()
    await until(lambda: _true(w.failing))  # the first write timed out
    assert not await w.finish(timeout=5.0)  # bounded by the failing end's 0.5 s


async def _true(value: bool) -> bool:
    return value

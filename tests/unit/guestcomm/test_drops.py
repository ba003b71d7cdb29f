"""Rate-limited drop logging: a flood of bad input gives a few lines and a count."""

from __future__ import annotations

import asyncio
import logging

import pytest

from servergroup.guestcomm.drops import Counters, DropLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_logs_the_first_few_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="t.drops")
    clock = Clock()
    counters = Counters()
    drops = DropLog(logging.getLogger("t.drops"), counters, burst=3, interval=10.0, monotonic=clock)
    for n in range(10_000):
        drops.drop("garbage", f"line {n}")
    drops.drop("other", "once")
    assert [r.getMessage() for r in caplog.records] == [
        "garbage: line 0",
        "garbage: line 1",
        "garbage: line 2",
        "other: once",
    ]
    caplog.clear()
    clock.now += 10.0
    drops.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "garbage: 9997 more not logged in the last 10 s"
    ]
    assert counters.dropped == {"garbage": 10_000, "other": 1}
    assert counters.dropped_total == 10_001
    caplog.clear()
    drops.drop("garbage", "after the window")
    assert [r.getMessage() for r in caplog.records] == ["garbage: after the window"]


def test_a_new_window_first_sums_up_the_old_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="t.drops")
    clock = Clock()
    drops = DropLog(
        logging.getLogger("t.drops"), Counters(), burst=1, interval=5.0, monotonic=clock
    )
    drops.drop("r", "a")
    drops.drop("r", "b")
    clock.now += 6
    drops.drop("r", "c")
    drops.close()
    assert [r.getMessage() for r in caplog.records] == [
        "r: a",
        "r: 1 more not logged in the last 6 s",
        "r: c",
    ]


def test_close_reports_what_is_held(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="t.drops")
    clock = Clock()
    drops = DropLog(logging.getLogger("t.drops"), Counters(), burst=0, monotonic=clock)
    drops.drop("r", "a", level=logging.DEBUG)
    drops.note("s", "b")
    clock.now += 1
    drops.close()
    assert sorted(r.getMessage() for r in caplog.records) == [
        "r: 1 more not logged in the last 1 s",
        "s: 1 more not logged in the last 1 s",
    ]


async def test_the_timer_logs_the_summary_without_further_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="t.drops")
    drops = DropLog(logging.getLogger("t.drops"), Counters(), burst=1, interval=0.05)
    drops.drop("r", "a")
    drops.drop("r", "b")
    for _ in range(100):
        if len(caplog.records) == 2:
            break
        await asyncio.sleep(0.02)
    assert [r.getMessage() for r in caplog.records][1].startswith("r: 1 more not logged")
    drops.close()


class Timers:
    """A scheduler standing in for an event loop's call_later, as the guest agent passes one."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, object]] = []
        self.cancelled = 0

    def __call__(self, delay: float, callback: object) -> Timers:
        self.calls.append((delay, callback))
        return self

    def cancel(self) -> None:
        self.cancelled += 1


def test_a_given_scheduler_runs_the_summary_without_asyncio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="t.drops")
    clock = Clock()
    timers = Timers()
    drops = DropLog(
        logging.getLogger("t.drops"),
        Counters(),
        burst=1,
        interval=10.0,
        monotonic=clock,
        schedule=timers,
    )
    drops.drop("r", "a")
    assert timers.calls == []  # nothing held back: no timer
    for _ in range(5):
        drops.drop("r", "held")
    assert [delay for delay, _ in timers.calls] == [10.0]  # armed once
    clock.now += 10.0
    ((_, flush),) = timers.calls
    assert callable(flush)
    flush()
    assert caplog.records[-1].getMessage() == "r: 5 more not logged in the last 10 s"
    drops.drop("r", "b")
    drops.drop("r", "held again")
    assert len(timers.calls) == 2
    drops.close()
    assert timers.cancelled == 1

"""The one backoff policy: delays, jitter, the deadline, and `retry`, on a clock we drive."""

from __future__ import annotations

import random

import pytest

from servergroup.common.backoff import Backoff, retry
from servergroup.common.errors import UsageError

POLICY = Backoff(initial=0.02, max_delay=0.5, factor=2.0, jitter=(0.5, 1.5))


class SteppingClock:
    """A clock whose `sleep` returns at once, moving time on and recording the delay."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay


def test_bases_grow_by_the_factor_up_to_the_cap() -> None:
    bases = POLICY.bases()
    assert [next(bases) for _ in range(8)] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.5]


def test_delays_are_jittered_within_the_range() -> None:
    delays = POLICY.delays(random.Random(1))
    for base in [0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5]:
        assert base * 0.5 <= next(delays) <= base * 1.5


def test_no_jitter_gives_the_bases() -> None:
    exact = Backoff(initial=0.2, max_delay=2.0, jitter=(1.0, 1.0))
    delays = exact.delays()
    assert [next(delays) for _ in range(6)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0, "max_delay": 1},
        {"initial": 2, "max_delay": 1},
        {"initial": 1, "max_delay": 2, "factor": 0.5},
        {"initial": 1, "max_delay": 2, "jitter": (1.5, 0.5)},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Backoff(**kwargs)  # type: ignore[arg-type]


async def test_attempts_stop_before_a_sleep_would_pass_the_deadline() -> None:
    clock = SteppingClock()
    start = clock.now
    seen = [n async for n in POLICY.attempts(clock, 1.0, random.Random(2))]
    assert seen == list(range(len(seen)))
    assert len(seen) == len(clock.slept) + 1  # the first attempt is at once
    # Every sleep ended before the deadline; the next one (at least half a base) would not have.
    bases = POLICY.bases()
    at = start
    for delay in clock.slept:
        base = next(bases)
        assert base * 0.5 <= delay <= base * 1.5
        at += delay
        assert at < start + 1.0
    assert at + next(bases) * 1.5 >= start + 1.0


async def test_retry_returns_the_first_success() -> None:
    clock = SteppingClock()
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("not yet")
        return "done"

    assert await retry(flaky, policy=POLICY, clock=clock, timeout=10.0) == "done"
    assert calls == 4
    assert len(clock.slept) == 3


async def test_retry_raises_the_last_failure_at_the_deadline() -> None:
    clock = SteppingClock()
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(f"attempt {calls}")

    with pytest.raises(ConnectionError) as caught:
        await retry(down, policy=POLICY, clock=clock, timeout=2.0)
    assert str(caught.value) == f"attempt {calls}"
    assert calls > 3
    assert clock.now - 100.0 < 2.0


async def test_retry_does_not_retry_what_it_is_told_not_to() -> None:
    clock = SteppingClock()

    async def broken() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await retry(
            broken,
            policy=POLICY,
            clock=clock,
            timeout=5.0,
            retry_on=lambda exc: isinstance(exc, ConnectionError),
        )
    assert clock.slept == []

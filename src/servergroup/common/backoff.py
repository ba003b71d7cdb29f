"""One retry policy: exponential backoff with jitter, capped, bounded by a deadline on a `Clock`.

Theory of operation
-------------------
A `Backoff` is a frozen description: the first delay (`initial`), how much
each failed attempt multiplies it by (`factor`), the most it grows to
(`max_delay`), and the jitter, a range of multipliers `(low, high)` that
each delay is scaled by at random so that many clients that failed together
do not retry together. The undrawn delay (the *base*) grows
`initial, initial*factor, ...` up to `max_delay`; what is slept is
`base * uniform(low, high)`.

Three ways to use it, one mechanism:

- `policy.delays()`: an endless iterator of jittered delays, for a loop that
  retries for ever (a watch, a port that reconnects) and starts a fresh
  iterator after each success to go back to `initial`.
- `policy.attempts(clock, timeout)`: an async iterator for a loop that must
  give up at a deadline. The first attempt is at once; before each next one
  it sleeps the next delay on `clock`; it ends (and the loop falls through
  to its own error) when the next sleep would reach the deadline, so no
  attempt starts after it.
- `retry(operation, ...)`: the common case of `attempts` in one call; it
  re-raises the last failure when the deadline comes.

Time is only ever read from the injected `Clock`, so tests run the policy on
a `FakeClock`; randomness comes from an injectable `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from servergroup.common.clock import Clock
from servergroup.common.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Delays `initial * factor**n`, at most `max_delay`, each scaled by `uniform(*jitter)`."""

    initial: float
    max_delay: float
    factor: float = 2.0
    jitter: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        low, high = self.jitter
        if not 0 < self.initial <= self.max_delay:
            raise UsageError("a backoff needs 0 < initial <= max_delay.")
        if self.factor < 1:
            raise UsageError("a backoff's factor must be at least 1.")
        if not 0 <= low <= high:
            raise UsageError(
                "a backoff's jitter must be a range (low, high) with 0 <= low <= high."
            )

    def bases(self) -> Iterator[float]:
        """The undrawn delays: `initial`, then times `factor`, capped at `max_delay`, for ever."""
        base = self.initial
        while True:
            yield base
            base = min(base * self.factor, self.max_delay)

    def draw(self, base: float, rng: random.Random | None = None) -> float:
        """`base` scaled by a random multiplier from the jitter range."""
        return base * (rng or _RANDOM).uniform(*self.jitter)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Endless jittered delays; take a fresh iterator to start again at `initial`."""
        for base in self.bases():
            yield self.draw(base, rng)

    def attempts(
        self, clock: Clock, timeout: float, rng: random.Random | None = None
    ) -> AsyncIterator[int]:
        """Attempt numbers 0, 1, ... with a backoff sleep between them, until `timeout` passes."""
        return _Attempts(self, clock, timeout, rng)


class _Attempts:
    """The async iterator `Backoff.attempts` returns (a class: nothing to finalize if abandoned)."""

    def __init__(
        self, policy: Backoff, clock: Clock, timeout: float, rng: random.Random | None
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._deadline = clock.monotonic() + timeout
        self._bases = policy.bases()
        self._attempt = 0

    def __aiter__(self) -> _Attempts:
        return self

    async def __anext__(self) -> int:
        if self._attempt > 0:
            delay = self._policy.draw(next(self._bases), self._rng)
            if self._clock.monotonic() + delay >= self._deadline:
                raise StopAsyncIteration
            await self._clock.sleep(delay)
        attempt = self._attempt
        self._attempt += 1
        return attempt


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    clock: Clock,
    timeout: float,
    retry_on: Callable[[Exception], bool] = lambda _exc: True,
    rng: random.Random | None = None,
) -> T:
    """Await `operation()` until it succeeds, retrying failures `retry_on` accepts.

    A failure `retry_on` refuses is raised at once; when the deadline comes,
    the last failure is raised. Cancellation is never retried.
    """
    last: Exception | None = None
    async for _ in policy.attempts(clock, timeout, rng):
        try:
            return await operation()
        except Exception as exc:
            if not retry_on(exc):
                raise
            last = exc
    assert last is not None, "the first attempt is always made"
    raise last


_RANDOM = random.Random()

__all__ = ["Backoff", "retry"]

"""How fast the sender multicasts: a loss-driven rate controller.

Theory of operation
-------------------
After the first multicast pass of each buffer, the sender knows what share
of the packets each receiver missed. Loss has two causes that call for
opposite reactions: *random* loss (a lossy link) does not change with the
rate, and slowing down only wastes time; *congestion* loss (a receiver or a
link that cannot keep up) falls when the sender slows down.

So the controller keeps the lowest loss seen over the last few rounds as the
link's baseline, and treats only the loss above that baseline as
congestion:

- excess loss above `tolerance`: the rate drops to what the worst receiver
  actually took in (achieved rate times its delivery share), less a margin;
- otherwise the rate grows, up to the cap: by `start_increase` (doubles)
  per round until the first such cut, as TCP's slow start, so that a fast
  network is found in a few rounds (512 MiB to one host of the lab without
  shaping: 1.98 -> 1.58 s, no change at 1 Gbit/s); by `increase` after it,
  since the link's rate is then near.

Before the first sample the baseline is taken as zero: a first round with
heavy random loss costs one slower round, after which the baseline has
learnt the link. Invariants: `min_rate <= rate <= cap` (when a cap is set);
the controller is a pure function of the samples it was given.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: A rate below this is not worth multicasting at (bits/s).
MIN_RATE = 1_000_000.0
#: With no cap, the rate is not allowed to grow past this (bits/s).
MAX_RATE = 100_000_000_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RateSettings:
    """`cap`: never faster (bits/s; None: no cap); `initial`: the first pass's rate;
    `start_increase` per clean round until congestion first cuts the rate, `increase`
    after that."""

    cap: float | None = None
    initial: float = 1_000_000_000.0
    tolerance: float = 0.03
    increase: float = 1.25
    start_increase: float = 2.0
    margin: float = 0.9
    window: int = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class RateSample:
    """One round: the rate asked for, the rate the pass achieved, the worst receiver's loss."""

    rate: float
    achieved: float
    loss: float


class RateController:
    """The multicast rate, adapted once per buffer to the loss the receivers report."""

    def __init__(self, settings: RateSettings) -> None:
        self._settings = settings
        start = settings.initial if settings.cap is None else min(settings.cap, settings.initial)
        self._rate = max(MIN_RATE, start)
        self._losses: deque[float] = deque(maxlen=settings.window)
        self._cut = False

    @property
    def rate(self) -> float:
        """Bits per second for the next pass."""
        return self._rate

    @property
    def baseline(self) -> float:
        """The loss the link shows whatever the rate (lowest of the recent rounds)."""
        return min(self._losses) if self._losses else 0.0

    def observe(self, sample: RateSample) -> float:
        """Take one round's result; return the rate for the next pass."""
        loss = min(1.0, max(0.0, sample.loss))
        excess = loss - self.baseline
        self._losses.append(loss)
        s = self._settings
        if excess > s.tolerance:
            taken = min(sample.rate, sample.achieved) * (1.0 - excess)
            self._rate = taken * s.margin
            self._cut = True
        else:
            self._rate = self._rate * (s.increase if self._cut else s.start_increase)
        ceiling = s.cap if s.cap is not None else MAX_RATE
        self._rate = min(ceiling, max(MIN_RATE, self._rate))
        return self._rate

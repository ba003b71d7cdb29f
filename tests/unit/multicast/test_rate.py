"""The rate controller: random loss does not slow the sender, congestion does."""

from __future__ import annotations

from servergroup.multicast.rate import MIN_RATE, RateController, RateSample, RateSettings

GBIT = 1e9


def clean_rounds(rate: RateController, rounds: int) -> list[float]:
    return [
        rate.observe(RateSample(rate=rate.rate, achieved=rate.rate, loss=0.0))
        for _ in range(rounds)
    ]


def test_no_loss_grows_up_to_the_cap() -> None:
    rate = RateController(RateSettings(cap=3 * GBIT, initial=GBIT))
    assert clean_rounds(rate, 3) == [2 * GBIT, 3 * GBIT, 3 * GBIT]


def test_the_rate_doubles_until_the_first_cut_then_grows_by_a_quarter() -> None:
    """Slow start: a fast network is found in a few rounds; once congestion has cut the
    rate, it grows by `increase` only (the link's rate is near)."""
    rate = RateController(RateSettings(initial=GBIT))
    assert clean_rounds(rate, 3) == [2 * GBIT, 4 * GBIT, 8 * GBIT]
    cut = rate.observe(RateSample(rate=8 * GBIT, achieved=8 * GBIT, loss=0.5))
    assert cut == 8 * GBIT * 0.5 * 0.9
    assert clean_rounds(rate, 2) == [cut * 1.25, cut * 1.25 * 1.25]


def test_random_loss_within_the_tolerance_does_not_end_the_start() -> None:
    rate = RateController(RateSettings(initial=GBIT))
    assert rate.observe(RateSample(rate=GBIT, achieved=GBIT, loss=0.02)) == 2 * GBIT


def test_the_initial_rate_never_exceeds_the_cap() -> None:
    assert RateController(RateSettings(cap=1e8, initial=GBIT)).rate == 1e8


def test_congestion_cuts_to_what_the_worst_receiver_took() -> None:
    rate = RateController(RateSettings(initial=GBIT))
    after = rate.observe(RateSample(rate=GBIT, achieved=GBIT, loss=0.4))
    assert after == GBIT * 0.6 * 0.9
    # the slower pass loses nothing: the loss was congestion, and it stays low
    assert rate.observe(RateSample(rate=after, achieved=after, loss=0.0)) > after


def test_steady_random_loss_is_learnt_as_the_baseline() -> None:
    rate = RateController(RateSettings(initial=GBIT, cap=GBIT))
    first = rate.observe(RateSample(rate=GBIT, achieved=GBIT, loss=0.10))
    assert first < GBIT  # unknown at first: treated as congestion once
    for _ in range(5):
        rate.observe(RateSample(rate=rate.rate, achieved=rate.rate, loss=0.10))
    assert rate.baseline == 0.10
    assert rate.rate == GBIT


def test_the_rate_never_falls_below_the_minimum() -> None:
    rate = RateController(RateSettings(initial=2 * MIN_RATE))
    assert rate.observe(RateSample(rate=rate.rate, achieved=rate.rate / 10, loss=0.9)) == MIN_RATE


def test_a_slow_pass_counts_at_the_rate_it_achieved() -> None:
    rate = RateController(RateSettings(initial=GBIT))
    assert rate.observe(RateSample(rate=GBIT, achieved=GBIT / 4, loss=0.5)) == GBIT / 4 * 0.5 * 0.9

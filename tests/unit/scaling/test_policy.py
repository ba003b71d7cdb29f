"""The autoscaling policy (`scaling.policy`) with scripted samples and time."""

from __future__ import annotations

import math

import pytest

from servergroup.scaling.policy import (
    FULL_WINDOW,
    BusySample,
    Decision,
    Policy,
    PolicyError,
    PolicyState,
    VcpuLimits,
    decide,
    decode_policy,
    encode_policy,
    next_timer,
    observe,
    start,
    window_busy,
)
from servergroup.scaling.protocol import Direction

POLICY = Policy(up_above=80, down_below=20, window_interval=10, cooldown_interval=30)
LIMITS = VcpuLimits(min_vcpus=1, max_vcpus=4)


def feed(
    state: PolicyState,
    *,
    busy: float,
    vcpus: int,
    begin: float,
    end: float,
    step: float = 1.0,
    policy: Policy = POLICY,
) -> PolicyState:
    """Samples every `step` seconds over [begin, end], each `busy` (a fraction) of `vcpus`."""
    at = begin
    while at < end - 1e-9:
        stop = min(at + step, end)
        sample = BusySample(
            begin_at=at, end_at=stop, cpu_seconds=busy * (stop - at) * vcpus, vcpus=vcpus
        )
        state = observe(policy, state, sample)
        at = stop
    return state


def run(state: PolicyState, online: int, now: float) -> tuple[Decision, PolicyState]:
    return decide(POLICY, state, online=online, limits=LIMITS, now=now, server="vm-1")


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"up_above": 80, "down_below": 0}, "above 0%"),
        ({"up_above": 80, "down_below": -5}, "above 0%"),
        ({"up_above": 50, "down_below": 50}, "must be below"),
        ({"up_above": 40, "down_below": 50}, "must be below"),
        ({"up_above": 101, "down_below": 50}, "at most 100%"),
        ({"up_above": 80, "down_below": 20, "window_interval": 0}, "longer than 0 s"),
        ({"up_above": 80, "down_below": 20, "cooldown_interval": -1}, "cannot be negative"),
        ({"up_above": math.nan, "down_below": 20}, "finite"),
        ({"up_above": 80, "down_below": 20, "window_interval": math.inf}, "finite"),
    ],
)
def test_a_policy_that_makes_no_sense_is_one_sentence(kwargs: dict[str, float], words: str) -> None:
    with pytest.raises(PolicyError, match=words) as caught:
        Policy(**kwargs)
    message = str(caught.value)
    assert message.endswith("."), message
    assert ". " not in message, message


def test_edges_that_are_valid() -> None:
    Policy(up_above=100, down_below=99.9, window_interval=0.001, cooldown_interval=0)
    assert "up above 100.0%" in Policy(up_above=100, down_below=1).describe()


def test_a_stored_policy_that_makes_no_sense_is_refused() -> None:
    assert encode_policy(POLICY) == {
        "up_above": 80.0,
        "down_below": 20.0,
        "window_interval": 10.0,
        "cooldown_interval": 30.0,
    }
    with pytest.raises(PolicyError, match="not a JSON object"):
        decode_policy([1, 2])
    with pytest.raises(PolicyError, match="no number 'window_interval'"):
        decode_policy({"up_above": 80, "down_below": 20, "cooldown_interval": 1})
    with pytest.raises(PolicyError, match="no number 'up_above'"):
        decode_policy({**encode_policy(POLICY), "up_above": True})
    with pytest.raises(PolicyError, match="must be below"):
        decode_policy({**encode_policy(POLICY), "down_below": 90})


def test_limits_and_samples_are_checked() -> None:
    with pytest.raises(PolicyError, match="1 <= min <= max"):
        VcpuLimits(min_vcpus=3, max_vcpus=2)
    with pytest.raises(PolicyError, match="1 <= min <= max"):
        VcpuLimits(min_vcpus=0, max_vcpus=2)
    with pytest.raises(PolicyError, match="not after it began"):
        BusySample(begin_at=1, end_at=1, cpu_seconds=0, vcpus=1)
    with pytest.raises(PolicyError, match="negative"):
        BusySample(begin_at=0, end_at=1, cpu_seconds=-0.1, vcpus=1)
    with pytest.raises(PolicyError, match="1 or more"):
        BusySample(begin_at=0, end_at=1, cpu_seconds=0, vcpus=0)
    with pytest.raises(PolicyError, match="1 or more"):
        run(start(0), 0, 5)


# -- the busy percentage ------------------------------------------------------------------


def test_busy_is_cpu_time_over_wall_time_times_online_vcpus() -> None:
    state = start(0)
    # 2 vCPUs; 3 s of CPU in [0, 2] (75 %), then 1 s in [2, 4] (25 %): 4 s / (4 s x 2).
    state = observe(POLICY, state, BusySample(begin_at=0, end_at=2, cpu_seconds=3, vcpus=2))
    state = observe(POLICY, state, BusySample(begin_at=2, end_at=4, cpu_seconds=1, vcpus=2))
    busy = window_busy(POLICY, state, 4)
    assert busy is not None
    assert busy[0] == pytest.approx(50.0)
    assert busy[1] == pytest.approx(4.0)
    assert state.samples[0].busy_fraction == pytest.approx(0.75)


def test_a_sample_across_the_window_edge_counts_in_proportion() -> None:
    policy = Policy(up_above=80, down_below=20, window_interval=4, cooldown_interval=0)
    state = start(0)
    # [0, 4] at 100 % of 1 vCPU, [4, 6] idle; window (2, 6]: half of the first sample.
    state = observe(policy, state, BusySample(begin_at=0, end_at=4, cpu_seconds=4, vcpus=1))
    state = observe(policy, state, BusySample(begin_at=4, end_at=6, cpu_seconds=0, vcpus=1))
    busy = window_busy(policy, state, 6)
    assert busy is not None
    assert busy[0] == pytest.approx(50.0)
    assert busy[1] == pytest.approx(4.0)


def test_samples_before_the_start_or_overlapping_are_not_kept() -> None:
    state = start(10)
    early = BusySample(begin_at=9, end_at=11, cpu_seconds=2, vcpus=1)
    assert observe(POLICY, state, early) == state
    state = observe(POLICY, state, BusySample(begin_at=10, end_at=12, cpu_seconds=0, vcpus=1))
    overlapping = BusySample(begin_at=11, end_at=13, cpu_seconds=2, vcpus=1)
    assert observe(POLICY, state, overlapping) == state


def test_old_samples_are_let_go() -> None:
    state = feed(start(0), busy=0.5, vcpus=1, begin=0, end=100)
    assert len(state.samples) <= POLICY.window_interval + 1


# -- deciding ------------------------------------------------------------------------------


def test_a_busy_server_is_scaled_up_after_a_full_window() -> None:
    state = start(0)
    state = feed(state, busy=1.0, vcpus=2, begin=0, end=9)
    decision, state = run(state, 2, 9)
    assert decision.direction is None
    assert "full window" in decision.sentence
    assert next_timer(POLICY, state) == 10
    state = feed(state, busy=1.0, vcpus=2, begin=9, end=10)
    decision, after = run(state, 2, 10)
    assert decision.direction is Direction.UP
    assert decision.target_vcpus == 3
    assert decision.busy_percent == pytest.approx(100.0)
    assert decision.sentence == (
        "vm-1 was 100.0% busy over the last 10 s, above 80.0%: scale up from 2 to 3 vCPUs"
    )
    assert after == PolicyState(since_at=10, last_action_at=10)
    assert next_timer(POLICY, after) == 40  # the cooldown


def test_an_idle_server_is_scaled_down() -> None:
    state = feed(start(0), busy=0.01, vcpus=3, begin=0, end=10)
    decision, _ = run(state, 3, 10)
    assert decision.direction is Direction.DOWN
    assert decision.target_vcpus == 2
    assert "below 20.0%: scale down from 3 to 2 vCPUs" in decision.sentence


@pytest.mark.parametrize("busy", [0.2, 0.5, 0.8])
def test_inside_the_band_or_on_a_threshold_nothing_happens(busy: float) -> None:
    state = feed(start(0), busy=busy, vcpus=2, begin=0, end=10)
    decision, after = run(state, 2, 10)
    assert decision.direction is None
    assert "nothing to do" in decision.sentence
    assert decision.busy_percent == pytest.approx(busy * 100)
    assert after == state


def test_at_the_limits_the_policy_says_so_and_does_nothing() -> None:
    busy = feed(start(0), busy=1.0, vcpus=4, begin=0, end=10)
    decision, _ = run(busy, 4, 10)
    assert decision.direction is None
    assert "at its maximum of 4 vCPUs" in decision.sentence
    idle = feed(start(0), busy=0.0, vcpus=1, begin=0, end=10)
    decision, _ = run(idle, 1, 10)
    assert decision.direction is None
    assert "at its minimum of 1 vCPUs" in decision.sentence


def test_the_cooldown_holds_after_an_action_then_a_new_window_is_needed() -> None:
    state = feed(start(0), busy=1.0, vcpus=1, begin=0, end=10)
    decision, state = run(state, 1, 10)
    assert decision.direction is Direction.UP
    # Still busy on 2 vCPUs, but within the cooldown (30 s): nothing.
    state = feed(state, busy=1.0, vcpus=2, begin=10, end=39)
    decision, state = run(state, 2, 39)
    assert decision.direction is None
    assert "cooldown" in decision.sentence
    state = feed(state, busy=1.0, vcpus=2, begin=39, end=40)
    decision, state = run(state, 2, 40)
    assert decision.direction is Direction.UP
    assert decision.target_vcpus == 3


def test_no_cooldown_still_waits_for_a_window_of_the_new_vcpus() -> None:
    policy = Policy(up_above=80, down_below=20, window_interval=10, cooldown_interval=0)
    state = feed(start(0), busy=1.0, vcpus=1, begin=0, end=10, policy=policy)
    decision, state = decide(policy, state, online=1, limits=LIMITS, now=10)
    assert decision.direction is Direction.UP
    state = feed(state, busy=1.0, vcpus=2, begin=10, end=15, policy=policy)
    decision, state = decide(policy, state, online=2, limits=LIMITS, now=15)
    assert decision.direction is None
    assert "full window" in decision.sentence


def test_gaps_in_the_samples_mean_no_decision() -> None:
    state = feed(start(0), busy=1.0, vcpus=2, begin=0, end=5)
    state = feed(state, busy=1.0, vcpus=2, begin=8, end=10)
    decision, _ = run(state, 2, 10)
    assert decision.direction is None
    assert "measured for 7.0 s of the last 10 s" in decision.sentence
    # Stale: the samples stopped long ago.
    state = feed(start(0), busy=1.0, vcpus=2, begin=0, end=10)
    decision, _ = run(state, 2, 10 + (1 - FULL_WINDOW) * 10 + 0.5)
    assert decision.direction is None
    # A missed sample is tolerated.
    state = feed(start(0), busy=1.0, vcpus=2, begin=0, end=5)
    state = feed(state, busy=1.0, vcpus=2, begin=6, end=10)
    decision, _ = run(state, 2, 10)
    assert decision.direction is Direction.UP


def test_a_scale_by_hand_starts_the_window_over() -> None:
    state = feed(start(0), busy=1.0, vcpus=2, begin=0, end=10)
    decision, state = run(state, 3, 10)
    assert decision.direction is None
    assert "now has 3 online vCPUs, not the 2 measured" in decision.sentence
    assert state == PolicyState(since_at=10)
    state = feed(state, busy=1.0, vcpus=3, begin=10, end=20)
    decision, _ = run(state, 3, 20)
    assert decision.direction is Direction.UP
    assert decision.target_vcpus == 4


def test_deciding_is_pure_the_same_inputs_give_the_same_answer() -> None:
    state = feed(start(0), busy=0.9, vcpus=2, begin=0, end=10)
    assert run(state, 2, 10) == run(state, 2, 10)

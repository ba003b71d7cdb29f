"""Properties of the autoscaling policy (hypothesis): limits, cooldown, full windows, monotony."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace

from hypothesis import given
from hypothesis import strategies as st

from servergroup.scaling.policy import (
    FULL_WINDOW,
    BusySample,
    Decision,
    Policy,
    PolicyState,
    VcpuLimits,
    decide,
    decode_policy,
    encode_policy,
    observe,
    start,
)
from servergroup.scaling.protocol import Direction

ORDER = {Direction.DOWN: -1, None: 0, Direction.UP: 1}


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    down = draw(st.floats(min_value=0.5, max_value=98.0))
    up = draw(st.floats(min_value=down + 0.5, max_value=100.0))
    return Policy(
        up_above=up,
        down_below=down,
        window_interval=draw(st.floats(min_value=0.5, max_value=20.0)),
        cooldown_interval=draw(st.floats(min_value=0.0, max_value=40.0)),
    )


@st.composite
def limits(draw: st.DrawFn) -> VcpuLimits:
    low = draw(st.integers(min_value=1, max_value=6))
    return VcpuLimits(min_vcpus=low, max_vcpus=draw(st.integers(min_value=low, max_value=8)))


#: One step of a run: how long until the next sample, how busy it was (fraction), and
#: whether the meter missed it (a gap).
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.05, max_value=3.0),
        st.floats(min_value=0.0, max_value=1.0),
        st.booleans() | st.just(False),
    ),
    min_size=1,
    max_size=120,
)


@dataclass
class Run:
    actions: list[tuple[float, Decision]]
    onlines: list[int]
    fed: list[BusySample]


def simulate(
    policy: Policy,
    bounds: VcpuLimits,
    online: int,
    plan: list[tuple[float, float, bool]],
) -> Run:
    """Feed samples per `plan`, decide after each, and carry out every action at once."""
    now = 0.0
    state = start(now)
    run = Run(actions=[], onlines=[online], fed=[])
    for interval, busy, missed in plan:
        begin, now = now, now + interval
        if not missed:
            sample = BusySample(
                begin_at=begin, end_at=now, cpu_seconds=busy * interval * online, vcpus=online
            )
            run.fed.append(sample)
            state = observe(policy, state, sample)
        decision, state = decide(policy, state, online=online, limits=bounds, now=now)
        if decision.direction is not None:
            assert decision.target_vcpus == online + ORDER[decision.direction]
            online += ORDER[decision.direction]
            run.actions.append((now, decision))
        run.onlines.append(online)
    return run


@given(policies(), limits(), st.data(), steps)
def test_never_past_the_limits(
    policy: Policy, bounds: VcpuLimits, data: st.DataObject, plan: list[tuple[float, float, bool]]
) -> None:
    online = data.draw(st.integers(min_value=bounds.min_vcpus, max_value=bounds.max_vcpus))
    run = simulate(policy, bounds, online, plan)
    assert all(bounds.min_vcpus <= n <= bounds.max_vcpus for n in run.onlines)


@given(policies(), limits(), st.data(), steps)
def test_never_two_actions_within_the_cooldown_nor_the_window(
    policy: Policy, bounds: VcpuLimits, data: st.DataObject, plan: list[tuple[float, float, bool]]
) -> None:
    online = data.draw(st.integers(min_value=bounds.min_vcpus, max_value=bounds.max_vcpus))
    run = simulate(policy, bounds, online, plan)
    times = [at for at, _ in run.actions]
    if times:  # the first action waits for a full window after the start
        assert times[0] >= policy.window_interval
    for before, after in itertools.pairwise(times):
        assert after - before >= max(policy.cooldown_interval, policy.window_interval)


@given(policies(), limits(), st.data(), steps)
def test_no_action_without_a_full_window_of_samples_since_the_last(
    policy: Policy, bounds: VcpuLimits, data: st.DataObject, plan: list[tuple[float, float, bool]]
) -> None:
    online = data.draw(st.integers(min_value=bounds.min_vcpus, max_value=bounds.max_vcpus))
    run = simulate(policy, bounds, online, plan)
    since = 0.0
    for at, _ in run.actions:
        window_begin = at - policy.window_interval
        covered = sum(
            min(s.end_at, at) - max(s.begin_at, window_begin)
            for s in run.fed
            if s.begin_at >= since and s.end_at > window_begin and s.begin_at < at
        )
        assert covered >= FULL_WINDOW * policy.window_interval - 1e-9
        since = at


@given(
    policies(),
    limits(),
    st.data(),
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=40),
    st.floats(min_value=1.0, max_value=4.0),
    st.floats(min_value=0.0, max_value=30.0),
)
def test_more_load_never_turns_the_decision_the_other_way(
    policy: Policy,
    bounds: VcpuLimits,
    data: st.DataObject,
    loads: list[float],
    factor: float,
    late: float,
) -> None:
    online = data.draw(st.integers(min_value=bounds.min_vcpus, max_value=bounds.max_vcpus))
    step = policy.window_interval / len(loads)
    light = start(0.0)
    heavy = start(0.0)
    for i, busy in enumerate(loads):
        sample = BusySample(
            begin_at=i * step,
            end_at=(i + 1) * step,
            cpu_seconds=busy * step * online,
            vcpus=online,
        )
        light = observe(policy, light, sample)
        heavy = observe(policy, heavy, replace(sample, cpu_seconds=sample.cpu_seconds * factor))
    now = policy.window_interval + late
    lighter, _ = decide(policy, light, online=online, limits=bounds, now=now)
    heavier, _ = decide(policy, heavy, online=online, limits=bounds, now=now)
    assert ORDER[lighter.direction] <= ORDER[heavier.direction]


def _steady(busy: float, policy: Policy, bounds: VcpuLimits, online: int) -> Run:
    plan = [(policy.window_interval / 10, busy, False)] * 12
    return simulate(policy, bounds, online, plan)


@given(policies(), limits(), st.data())
def test_a_busy_loop_scales_up_and_idle_scales_down(
    policy: Policy, bounds: VcpuLimits, data: st.DataObject
) -> None:
    online = data.draw(st.integers(min_value=bounds.min_vcpus, max_value=bounds.max_vcpus))
    busy = _steady(1.0, policy, bounds, online)
    idle = _steady(0.0, policy, bounds, online)
    if online < bounds.max_vcpus and policy.up_above < 100:
        assert [d.direction for _, d in busy.actions][:1] == [Direction.UP]
    else:
        assert not busy.actions
    if online > bounds.min_vcpus:
        assert [d.direction for _, d in idle.actions][:1] == [Direction.DOWN]
    else:
        assert not idle.actions


@given(policies(), st.floats(min_value=0.0, max_value=100.0))
def test_before_the_first_window_nothing_happens(policy: Policy, early: float) -> None:
    now = min(early, policy.window_interval * 0.999)
    state: PolicyState = start(0.0)
    state = observe(
        policy,
        state,
        BusySample(begin_at=0.0, end_at=max(now, 1e-6), cpu_seconds=100.0, vcpus=1),
    )
    decision, after = decide(
        policy, state, online=1, limits=VcpuLimits(min_vcpus=1, max_vcpus=2), now=now
    )
    assert decision.direction is None
    assert after == state


@given(policies())
def test_a_policy_survives_its_json(policy: Policy) -> None:
    assert decode_policy(json.loads(json.dumps(encode_policy(policy)))) == policy

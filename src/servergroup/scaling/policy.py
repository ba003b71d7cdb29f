"""Automatic scaling: when to scale a server's vCPUs up or down, from its busy time, pure.

Theory of operation (no I/O, no clock: every entry point takes `now`, in
seconds of the monotonic clock).

The host measures how busy a server's online vCPUs are (`scaling.busy`
reads the CPU time of their host threads) and hands each measurement in as
a `BusySample`: over the interval `[begin_at, end_at]`, the host threads of
the `vcpus` online vCPUs used `cpu_seconds` of CPU time. Samples of one
server must not overlap (one meter, read again and again, makes them end to
end); `observe` drops one that overlaps the last.

**Busy percentage of a window.** For the last `window_interval` seconds
before `now` (the *window*), with each sample's interval clipped to the
window and its CPU time counted in proportion to the part kept::

    busy% = 100 * sum(cpu_seconds_kept) / sum(seconds_kept * vcpus)

that is, the CPU time of the online vCPUs' threads divided by (wall time x
online vCPUs): 100 % when every online vCPU ran all the time, 0 % when
none ran at all. (With the same vCPUs online throughout, it is exactly the
CPU time over the window divided by the window and by the vCPU count.)

**A full window.** Only samples that began at or after the policy's start
or its last action count (what came before describes another set of
vCPUs). The window is *full* when such samples cover at least `FULL_WINDOW`
(90 %) of it: a missed sample or two is tolerated; a server that was not
measured for a tenth of the window is not judged.

**Deciding** (`decide`), in this order:

1. The server's online vCPU count differs from what the window's samples
   measured (someone scaled it by hand): the policy starts over from `now`,
   as after an action.
2. Before `next_timer(policy, state)` (a full `window_interval` after the
   start or the last action, and `cooldown_interval` after the last action):
   nothing.
3. No full window yet: nothing.
4. Hysteresis: **up** when busy% is strictly above `up_above` and fewer than
   `limits.max_vcpus` are online; **down** when strictly below `down_below`
   and more than `limits.min_vcpus` are online; otherwise nothing (inside
   the band, or at a limit). A load of exactly a threshold does nothing
   (busy% is rounded to a millionth of a percent first, so float sums do
   not decide that).

Every decision carries one sentence saying what was decided and why. An
action (up or down) starts the cooldown and a new window at `now`, whether
or not the scaling then succeeds, so a scale that keeps failing (no free
physical CPU) is tried at most once per cooldown.

`encode_policy` / `decode_policy` turn a policy into a JSON object and back
(`decode(encode(p)) == p`), for whoever stores it.

Guarantees (the property tests check them): the policy never asks past the
limits; two actions are at least `max(cooldown_interval, window_interval)`
apart; no action without a full window after the last one; for the same
state and time, more load never makes the decision go the other way
(down < nothing < up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

from servergroup.common.errors import UsageError
from servergroup.guestcomm.protocol import Json, JsonObject
from servergroup.scaling.protocol import Direction

#: The part of the window that samples must cover before the policy judges it.
FULL_WINDOW: Final = 0.9
#: What `Policy` takes when not told (seconds).
DEFAULT_WINDOW_INTERVAL: Final = 30.0
DEFAULT_COOLDOWN_INTERVAL: Final = 60.0


class PolicyError(UsageError):
    """A policy, a sample or limits that make no sense (one sentence saying which)."""


def _finite(value: float, what: str) -> None:
    if not math.isfinite(value):
        raise PolicyError(f"{what} must be a finite number, not {value!r}.")


def _percent(value: float) -> str:
    return f"{value:.1f}%"


def _seconds(value: float) -> str:
    return f"{value:g} s"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Scale up above `up_above` % busy, down below `down_below` %, judged over a window.

    Valid when 0 < down_below < up_above <= 100, window_interval > 0 and
    cooldown_interval >= 0 (all finite); otherwise `PolicyError`.
    """

    up_above: float
    down_below: float
    window_interval: float = DEFAULT_WINDOW_INTERVAL
    cooldown_interval: float = DEFAULT_COOLDOWN_INTERVAL

    def __post_init__(self) -> None:
        _finite(self.up_above, "the scale-up threshold")
        _finite(self.down_below, "the scale-down threshold")
        _finite(self.window_interval, "the window")
        _finite(self.cooldown_interval, "the cooldown")
        if not self.down_below > 0:
            raise PolicyError(
                f"the scale-down threshold must be above 0%, not {_percent(self.down_below)}."
            )
        if not self.down_below < self.up_above:
            raise PolicyError(
                f"the scale-down threshold ({_percent(self.down_below)}) must be below "
                f"the scale-up threshold ({_percent(self.up_above)})."
            )
        if not self.up_above <= 100:
            raise PolicyError(
                f"the scale-up threshold must be at most 100%, not {_percent(self.up_above)}."
            )
        if not self.window_interval > 0:
            raise PolicyError(
                f"the window must be longer than 0 s, not {_seconds(self.window_interval)}."
            )
        if not self.cooldown_interval >= 0:
            raise PolicyError(
                f"the cooldown cannot be negative ({_seconds(self.cooldown_interval)})."
            )

    def describe(self) -> str:
        """The policy in a few words, for listings and sentences."""
        return (
            f"up above {_percent(self.up_above)}, down below {_percent(self.down_below)}, "
            f"over {_seconds(self.window_interval)}, "
            f"cooldown {_seconds(self.cooldown_interval)}"
        )


_POLICY_KEYS: Final = ("up_above", "down_below", "window_interval", "cooldown_interval")


def encode_policy(policy: Policy) -> JsonObject:
    """The JSON object of `policy` (to store it): its four fields, by name."""
    return {key: float(getattr(policy, key)) for key in _POLICY_KEYS}


def decode_policy(obj: Json) -> Policy:
    """The `Policy` of a JSON object `encode_policy` made; PolicyError (one sentence) if not."""
    if not isinstance(obj, dict):
        raise PolicyError("a scaling policy record is not a JSON object.")
    values: dict[str, float] = {}
    for key in _POLICY_KEYS:
        value = obj.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise PolicyError(f"a scaling policy record has no number {key!r}.")
        values[key] = float(value)
    return Policy(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class VcpuLimits:
    """The flavor's limits: at least `min_vcpus`, at most `max_vcpus` online."""

    min_vcpus: int
    max_vcpus: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_vcpus <= self.max_vcpus:
            raise PolicyError(
                f"vCPU limits {self.min_vcpus}..{self.max_vcpus} are not 1 <= min <= max."
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class BusySample:
    """Over `[begin_at, end_at]` the threads of `vcpus` online vCPUs used `cpu_seconds` of CPU."""

    begin_at: float
    end_at: float
    cpu_seconds: float
    vcpus: int

    def __post_init__(self) -> None:
        for value, what in (
            (self.begin_at, "a sample's start"),
            (self.end_at, "a sample's end"),
            (self.cpu_seconds, "a sample's CPU time"),
        ):
            _finite(value, what)
        if not self.end_at > self.begin_at:
            raise PolicyError(f"a sample ends at {self.end_at!r}, not after it began.")
        if self.cpu_seconds < 0:
            raise PolicyError(f"a sample's CPU time is negative ({self.cpu_seconds!r}).")
        if self.vcpus < 1:
            raise PolicyError(f"a sample has {self.vcpus} online vCPUs, not 1 or more.")

    @property
    def busy_fraction(self) -> float:
        """This sample alone: CPU time / (wall time x online vCPUs)."""
        return self.cpu_seconds / ((self.end_at - self.begin_at) * self.vcpus)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyState:
    """What the policy remembers of one server: since when samples count, and which."""

    #: Samples that began before this do not count (the policy's start or its last action).
    since_at: float
    #: When the policy last asked for a scale (the cooldown runs from there); None: never.
    last_action_at: float | None = None
    #: Samples kept (those that may still fall in a window), by time.
    samples: tuple[BusySample, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Scale `direction` (None: do nothing), and the one sentence saying why."""

    direction: Direction | None
    sentence: str
    #: The window's busy percentage, when there was a full window to judge.
    busy_percent: float | None = None
    #: The online vCPU count the decision asks for (`direction` not None).
    target_vcpus: int | None = None


def start(now: float) -> PolicyState:
    """A policy put on a server at `now`: its first decision waits for a full window."""
    _finite(now, "the time")
    return PolicyState(since_at=now)


def observe(policy: Policy, state: PolicyState, sample: BusySample) -> PolicyState:
    """`state` with `sample` kept, if it counts (after `since_at`, not overlapping the last)."""
    if sample.begin_at < state.since_at:
        return state
    if state.samples and sample.begin_at < state.samples[-1].end_at:
        return state
    # Keep what a window ending at this sample or later can still reach.
    oldest = sample.end_at - policy.window_interval
    kept = tuple(s for s in state.samples if s.end_at > oldest)
    return replace(state, samples=(*kept, sample))


def next_timer(policy: Policy, state: PolicyState) -> float:
    """The earliest time a decision may scale: a window after the start or last action, and
    the cooldown after the last action."""
    ready_at = state.since_at + policy.window_interval
    if state.last_action_at is not None:
        ready_at = max(ready_at, state.last_action_at + policy.cooldown_interval)
    return ready_at


def window_busy(policy: Policy, state: PolicyState, now: float) -> tuple[float, float] | None:
    """(busy %, seconds covered) of the window ending at `now`; None when no sample falls in it."""
    window_begin = now - policy.window_interval
    cpu = 0.0
    capacity = 0.0
    covered = 0.0
    for sample in state.samples:
        begin = max(sample.begin_at, window_begin, state.since_at)
        end = min(sample.end_at, now)
        if end <= begin:
            continue
        kept = (end - begin) / (sample.end_at - sample.begin_at)
        cpu += sample.cpu_seconds * kept
        capacity += (end - begin) * sample.vcpus
        covered += end - begin
    if covered <= 0:
        return None
    return 100.0 * cpu / capacity, covered


def decide(
    policy: Policy,
    state: PolicyState,
    *,
    online: int,
    limits: VcpuLimits,
    now: float,
    server: str = "the server",
) -> tuple[Decision, PolicyState]:
    """What to do now for `server` with `online` vCPUs online; the state to keep after it."""
    _finite(now, "the time")
    if online < 1:
        raise PolicyError(f"{server} has {online} online vCPUs, not 1 or more.")
    window_begin = now - policy.window_interval
    measured = {s.vcpus for s in state.samples if s.end_at > window_begin and s.begin_at <= now}
    if measured - {online}:
        return (
            Decision(
                direction=None,
                sentence=(
                    f"{server} now has {online} online vCPUs, not the "
                    f"{', '.join(str(n) for n in sorted(measured))} measured: "
                    f"judging it afresh after a full window of {_seconds(policy.window_interval)}"
                ),
            ),
            replace(state, since_at=now, samples=()),
        )
    ready_at = next_timer(policy, state)
    if now < ready_at:
        why = (
            "in the cooldown after its last scale"
            if state.last_action_at is not None
            and now < state.last_action_at + policy.cooldown_interval
            else f"waiting for a full window of {_seconds(policy.window_interval)}"
        )
        return Decision(direction=None, sentence=f"{server}: {why}, nothing to do"), state
    busy = window_busy(policy, state, now)
    needed = FULL_WINDOW * policy.window_interval
    if busy is None or busy[1] < needed:
        covered = 0.0 if busy is None else busy[1]
        return (
            Decision(
                direction=None,
                sentence=(
                    f"{server}: measured for {covered:.1f} s of the last "
                    f"{_seconds(policy.window_interval)}, not enough to judge, nothing to do"
                ),
            ),
            state,
        )
    # Rounded (to a millionth of a percent) so that a load of exactly a threshold, summed
    # from samples in floating point, compares as equal to it; rounding keeps the order.
    percent = round(busy[0], 6)
    load = f"{server} was {_percent(percent)} busy over the last {_seconds(policy.window_interval)}"
    direction: Direction | None = None
    if percent > policy.up_above:
        if online < limits.max_vcpus:
            direction, target = Direction.UP, online + 1
            sentence = (
                f"{load}, above {_percent(policy.up_above)}: "
                f"scale up from {online} to {target} vCPUs"
            )
        else:
            sentence = (
                f"{load}, above {_percent(policy.up_above)}, but it is at its maximum of "
                f"{limits.max_vcpus} vCPUs: nothing to do"
            )
    elif percent < policy.down_below:
        if online > limits.min_vcpus:
            direction, target = Direction.DOWN, online - 1
            sentence = (
                f"{load}, below {_percent(policy.down_below)}: "
                f"scale down from {online} to {target} vCPUs"
            )
        else:
            sentence = (
                f"{load}, below {_percent(policy.down_below)}, but it is at its minimum of "
                f"{limits.min_vcpus} vCPUs: nothing to do"
            )
    else:
        sentence = (
            f"{load}, within {_percent(policy.down_below)}..{_percent(policy.up_above)}: "
            f"nothing to do"
        )
    if direction is None:
        return Decision(direction=None, sentence=sentence, busy_percent=percent), state
    return (
        Decision(direction=direction, sentence=sentence, busy_percent=percent, target_vcpus=target),
        PolicyState(since_at=now, last_action_at=now),
    )


__all__ = [
    "DEFAULT_COOLDOWN_INTERVAL",
    "DEFAULT_WINDOW_INTERVAL",
    "FULL_WINDOW",
    "BusySample",
    "Decision",
    "Policy",
    "PolicyError",
    "PolicyState",
    "VcpuLimits",
    "decide",
    "decode_policy",
    "encode_policy",
    "next_timer",
    "observe",
    "start",
    "window_busy",
]

"""The helper's exit-status conventions and the choice of the CPU to take offline (pure)."""

from __future__ import annotations

import pytest

from servergroup.scaling.choice import (
    FIRST_ERROR_STATUS,
    Chosen,
    HelperEnd,
    HelperOutcome,
    Refused,
    choose_offline,
    helper_add_args,
    named_cpu,
)

ONLINE = (0, 1, 2, 3)


def exited(status: int) -> HelperOutcome:
    return HelperOutcome(end=HelperEnd.EXITED, status=status)


@pytest.mark.parametrize(
    ("outcome", "cpu"),
    [
        (exited(2), 2),  # a valid online CPU
        (exited(3), 3),
        (exited(0), 3),  # no preference: the highest online
        (exited(255), 3),  # exit(-1): an error, not CPU 255 (spec section 6)
        (exited(FIRST_ERROR_STATUS), 3),
        (exited(FIRST_ERROR_STATUS - 1), 3),  # names CPU 199, which is not online
        (exited(5), 3),  # not online
        (HelperOutcome(end=HelperEnd.MISSING), 3),
        (HelperOutcome(end=HelperEnd.NOT_STARTED, detail="Permission denied"), 3),
        (HelperOutcome(end=HelperEnd.SIGNALLED, status=9), 3),
    ],
)
def test_choice(outcome: HelperOutcome, cpu: int) -> None:
    choice = choose_offline(outcome, ONLINE)
    assert isinstance(choice, Chosen)
    assert choice.cpu == cpu
    assert choice.reason


def test_the_fallback_skips_holes() -> None:
    choice = choose_offline(exited(0), (0, 2, 5))
    assert choice == Chosen(cpu=5, reason=choice.reason)
    named = choose_offline(exited(2), (0, 2, 5))
    assert isinstance(named, Chosen)
    assert named.cpu == 2


def test_cpu_0_is_never_chosen() -> None:
    assert isinstance(choose_offline(exited(0), (0, 1)), Chosen)
    for outcome in (exited(0), exited(1), HelperOutcome(end=HelperEnd.MISSING)):
        refused = choose_offline(outcome, (0,))
        assert isinstance(refused, Refused)
        assert "CPU 0" in refused.reason
    assert isinstance(choose_offline(exited(0), ()), Refused)


def test_a_helper_past_its_deadline_is_no_choice() -> None:
    refused = choose_offline(HelperOutcome(end=HelperEnd.TIMED_OUT), ONLINE)
    assert isinstance(refused, Refused)
    assert "deadline" in refused.reason


@pytest.mark.parametrize(
    ("status", "cpu"), [(0, None), (1, 1), (199, 199), (200, None), (255, None), (127, 127)]
)
def test_named_cpu(status: int, cpu: int | None) -> None:
    assert named_cpu(exited(status)) == cpu


def test_helper_add_args_are_compact_json() -> None:
    assert helper_add_args(3, (0, 3, 1)) == ["--cpu_add", "3", "[0,1,3]"]


def test_cpus_without_a_switch_are_not_chosen() -> None:
    choice = choose_offline(exited(3), ONLINE, fixed=(3,))
    assert choice == Chosen(cpu=2, reason=choice.reason)
    refused = choose_offline(exited(0), (0, 1), fixed=(1,))
    assert isinstance(refused, Refused)
    assert "no online switch" in refused.reason

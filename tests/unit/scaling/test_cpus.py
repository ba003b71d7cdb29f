"""CPU lists as Linux writes them, and the original's `offline_cpuset`."""

from __future__ import annotations

import pytest

from servergroup.scaling.cpus import (
    MAX_CPU,
    CpuListError,
    format_cpu_list,
    parse_cpu_list,
    parse_cpuset_repr,
)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-2,5", (0, 1, 2, 5)),
        ("0", (0,)),
        ("0-1\n", (0, 1)),
        ("", ()),
        ("\n", ()),
        ("3,1,2", (1, 2, 3)),
        ("1-1", (1,)),
        ("0-3,2", (0, 1, 2, 3)),
        (f"{MAX_CPU}", (MAX_CPU,)),
    ],
)
def test_cpu_lists(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    "text",
    ["a", "1-", "-1", "1,,2", "2-1", "1 2", "01", "0x1", "1-2-3", f"{MAX_CPU + 1}", ",", "+1"],
)
def test_malformed_cpu_lists_are_one_sentence(text: str) -> None:
    with pytest.raises(CpuListError) as caught:
        parse_cpu_list(text)
    message = str(caught.value)
    assert message.endswith(".")
    assert "\n" not in message
    assert "is not a CPU list" in message


@pytest.mark.parametrize(
    ("cpus", "text"),
    [((0, 1, 2, 5), "0-2,5"), ((), ""), ((3,), "3"), ((1, 2), "1-2"), ((5, 0, 1), "0-1,5")],
)
def test_format(cpus: tuple[int, ...], text: str) -> None:
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text) == tuple(sorted(cpus))


def test_a_shorter_list_after_a_longer_keeps_nothing_stale() -> None:
    """The original's parser reused an array it never zeroed (spec section 6)."""
    assert parse_cpu_list("0-7") == tuple(range(8))
    assert parse_cpu_list("1") == (1,)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("set([1, 2])", (1, 2)),
        ("set([])", ()),
        ("set([3])", (3,)),
        ("[1, 2]", (1, 2)),
        ("[]", ()),
        ("1-2", (1, 2)),
        ("", ()),
    ],
)
def test_offline_cpuset(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpuset_repr(text) == cpus


@pytest.mark.parametrize("text", ["set([1,,2])", "set([a])", "set((1,2))", "{1, 2}", "[1, -2]"])
def test_malformed_offline_cpuset(text: str) -> None:
    with pytest.raises(CpuListError):
        parse_cpuset_repr(text)

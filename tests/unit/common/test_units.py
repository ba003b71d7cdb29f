"""The one parser for rates and sizes: spellings, exactness, round trips, one-sentence errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.common.errors import UsageError
from servergroup.common.units import (
    GIB,
    MIB,
    format_rate,
    format_size,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("1gbit", 10**9),
        ("100mbit", 10**8),
        ("1.5mbit", 1_500_000),
        ("512kbit", 512_000),
        ("64kibit", 65_536),
        ("800m", 800_000_000),
        ("1.5G", 1_500_000_000),
        ("2.5gbit/s", 2_500_000_000),
        ("1000000", 1_000_000),
        (" 2GBIT ", 2 * 10**9),
        ("10", 10),
        (250_000_000, 250_000_000),
        ("0", 0),
    ],
)
def test_parse_rate(text: str | int, bits: int) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["fast", "", "-1mbit", "1 gbits", "1.2.3mbit", ".mbit", True, -5])
def test_what_is_not_a_rate_says_so_in_one_sentence(text: str | int) -> None:
    with pytest.raises(UsageError) as caught:
        parse_rate(text, what="--rate")
    message = str(caught.value)
    assert message.startswith(f"--rate {text!r} is ")
    assert ". " not in message
    assert message.endswith(".")


@pytest.mark.parametrize("text", ["100mbps", "1gbps", "10MB/s"])
def test_bytes_per_second_gets_a_hint(text: str) -> None:
    with pytest.raises(UsageError, match="bps' means bytes"):
        parse_rate(text)


def test_format_rate() -> None:
    assert format_rate(10**9) == "1gbit"
    assert format_rate(1_500_000) == "1500kbit"
    assert format_rate(12_344) == "12344bit"
    assert format_rate(0) == "0bit"


@given(st.integers(min_value=0, max_value=10**15))
def test_formatted_rates_parse_back(bits: int) -> None:
    assert parse_rate(format_rate(bits)) == bits


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 * MIB),
        ("64mib", 64 * MIB),
        ("64M", 64 * MIB),
        ("1g", GIB),
        ("1.5GiB", GIB + GIB // 2),
        ("1.5GB", 1_500_000_000),
        ("512k", 512 * 1024),
        ("9000", 9000),
        ("9000b", 9000),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_a_bare_number_counts_in_the_default_unit() -> None:
    assert parse_size("256", default_unit=MIB) == 256 * MIB
    assert parse_size(256, default_unit=MIB) == 256 * MIB
    assert parse_size("1GiB", default_unit=MIB) == GIB


@pytest.mark.parametrize("text", ["big", "", "-64MiB", "64 MiBs", "1gbit", "8m/s", False])
def test_what_is_not_a_size_says_so(text: str | int) -> None:
    with pytest.raises(UsageError, match=r"^--memory .* is (not a size|negative)"):
        parse_size(text, what="--memory")


def test_format_size() -> None:
    assert format_size(64 * MIB) == "64MiB"
    assert format_size(GIB) == "1GiB"
    assert format_size(1500) == "1500B"


@given(st.integers(min_value=0, max_value=1 << 50))
def test_formatted_sizes_parse_back(size: int) -> None:
    assert parse_size(format_size(size)) == size

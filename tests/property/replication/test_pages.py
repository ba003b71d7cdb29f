"""Page runs: canonical form, round trips, merging and splitting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.replication.pages import (
    batch_runs,
    canonical_runs,
    from_runs,
    merge_runs,
    page_count,
    split_runs,
    to_runs,
)

pytestmark = pytest.mark.timeout(60)

indices = st.lists(st.integers(0, 500), max_size=80)


@given(indices)
def test_runs_round_trip_to_the_set_of_pages(pages: list[int]) -> None:
    runs = to_runs(pages)
    assert canonical_runs(runs, 501)
    assert from_runs(runs) == sorted(set(pages))
    assert page_count(runs) == len(set(pages))


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40)), max_size=30))
def test_merging_covers_the_same_pages_canonically(runs: list[tuple[int, int]]) -> None:
    merged = merge_runs(runs)
    assert canonical_runs(merged, 341)
    assert set(from_runs(merged)) == set(from_runs(runs))


@given(indices, st.integers(1, 9))
def test_splitting_bounds_each_run_and_keeps_the_pages(pages: list[int], most: int) -> None:
    pieces = split_runs(to_runs(pages), most)
    assert all(0 < count <= most for _, count in pieces)
    assert from_runs(pieces) == sorted(set(pages))


def test_bad_runs_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        to_runs([-1])
    with pytest.raises(ValueError, match="empty"):
        merge_runs([(3, 0)])
    assert not canonical_runs(((0, 2), (2, 1)), 10)  # touching runs are not canonical
    assert not canonical_runs(((5, 6),), 10)  # past the end


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30)), max_size=20),
    st.integers(1, 40),
    st.integers(1, 5),
)
def test_batches_are_bounded_and_keep_every_page_in_order(
    runs: list[tuple[int, int]], most_pages: int, most_runs: int
) -> None:
    batches = batch_runs(runs, most_pages, most_runs)
    assert all(0 < page_count(b) <= most_pages and len(b) <= most_runs for b in batches)
    assert [p for b in batches for p in from_runs(b)] == from_runs(runs)

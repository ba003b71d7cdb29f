"""One contract for both dirty-page trackers: the kernel's (userfaultfd + PAGEMAP_SCAN) and hashing.

The kernel tracker runs against the real kernel of this machine; the suite
fails (it does not skip) where the kernel cannot do it, since the issue
requires it here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from servergroup.common.errors import UsageError
from servergroup.replication import tracking, uffd
from servergroup.replication.pages import DirtyPages, from_runs
from servergroup.replication.regions import PAGE_SIZE, Region, RegionSet
from servergroup.replication.tracking import (
    DirtyTracker,
    HashTracker,
    TrackerKind,
    open_tracker,
)
from servergroup.replication.uffd import KernelTracker, kernel_tracking_unsupported

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[TrackerKind.KERNEL, TrackerKind.HASH], ids=lambda k: k.value)
def tracker(request: pytest.FixtureRequest) -> Iterator[DirtyTracker]:
    made: DirtyTracker = KernelTracker() if request.param is TrackerKind.KERNEL else HashTracker()
    yield made
    made.close()


@pytest.fixture
def regions() -> Iterator[RegionSet]:
    made = RegionSet()
    yield made
    made.close()


def pages_of(found: list[DirtyPages]) -> dict[str, list[int]]:
    return {d.region: from_runs(d.runs) for d in found}


def touch(region: Region, page: int, offset: int = 0) -> None:
    """Change one byte of `page` (so that both trackers must see it)."""
    at = page * PAGE_SIZE + offset
    region.view[at] = (region.view[at] + 1) % 256


def test_the_kernel_here_supports_write_protect_tracking() -> None:
    assert kernel_tracking_unsupported() is None


def test_nothing_is_dirty_right_after_tracking_starts(
    tracker: DirtyTracker, regions: RegionSet
) -> None:
    region = regions.allocate("a", 16 * PAGE_SIZE)
    region.view[:] = b"\x05" * region.size  # written before tracking: not reported
    tracker.track(region)
    assert pages_of(tracker.collect()) == {"a": []}


def test_the_pages_written_are_reported_once(tracker: DirtyTracker, regions: RegionSet) -> None:
    region = regions.allocate("a", 64 * PAGE_SIZE)
    tracker.track(region)
    for page, offset in [(0, 0), (3, 4095), (4, 17), (5, 0), (63, 100), (3, 1)]:
        touch(region, page, offset)
    assert pages_of(tracker.collect()) == {"a": [0, 3, 4, 5, 63]}
    assert pages_of(tracker.collect()) == {"a": []}
    touch(region, 4)
    assert pages_of(tracker.collect()) == {"a": [4]}


def test_reset_forgets_earlier_writes(tracker: DirtyTracker, regions: RegionSet) -> None:
    region = regions.allocate("a", 8 * PAGE_SIZE)
    tracker.track(region)
    touch(region, 1)
    tracker.reset()
    touch(region, 6)
    assert pages_of(tracker.collect()) == {"a": [6]}


def test_many_regions_are_tracked_apart(tracker: DirtyTracker, regions: RegionSet) -> None:
    made = [regions.allocate(f"r{i}", (i + 1) * PAGE_SIZE * 3) for i in range(5)]
    for region in made:
        tracker.track(region)
    for i, region in enumerate(made):
        touch(region, i)
        touch(region, region.pages - 1)
    found = pages_of(tracker.collect())
    assert found == {r.name: sorted({i, r.pages - 1}) for i, r in enumerate(made)}


def test_numpy_stores_are_seen(tracker: DirtyTracker, regions: RegionSet) -> None:
    region = regions.allocate("counts", 32 * PAGE_SIZE)
    tracker.track(region)
    counts = region.array(np.uint64)
    counts[PAGE_SIZE // 8 * 7] += 1  # first word of page 7
    counts[PAGE_SIZE // 8 * 9 : PAGE_SIZE // 8 * 11] = 42  # pages 9 and 10 whole
    del counts
    assert pages_of(tracker.collect()) == {"counts": [7, 9, 10]}


def test_stores_made_by_the_kernel_are_seen(tracker: DirtyTracker, regions: RegionSet) -> None:
    """`readv` into a view writes from kernel mode; async write-protect still sees it."""
    region = regions.allocate("a", 8 * PAGE_SIZE)
    tracker.track(region)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"\xaa" * 10)
        assert os.readv(read_end, [region.view[5 * PAGE_SIZE + 100 : 5 * PAGE_SIZE + 110]]) == 10
    finally:
        os.close(read_end)
        os.close(write_end)
    assert pages_of(tracker.collect()) == {"a": [5]}


def test_an_untracked_region_is_no_longer_reported(
    tracker: DirtyTracker, regions: RegionSet
) -> None:
    a = regions.allocate("a", 4 * PAGE_SIZE)
    b = regions.allocate("b", 4 * PAGE_SIZE)
    tracker.track(a)
    tracker.track(b)
    tracker.untrack(a)
    touch(a, 0)
    touch(b, 2)
    assert pages_of(tracker.collect()) == {"b": [2]}


def test_tracking_a_region_twice_is_refused(tracker: DirtyTracker, regions: RegionSet) -> None:
    region = regions.allocate("a", PAGE_SIZE)
    tracker.track(region)
    with pytest.raises(UsageError):
        tracker.track(region)


def test_the_trackers_differ_only_on_stores_of_the_same_bytes(regions: RegionSet) -> None:
    region = regions.allocate("a", 32 * PAGE_SIZE)
    kernel, hashing = KernelTracker(), HashTracker()
    try:
        kernel.track(region)
        hashing.track(region)
        touch(region, 2)
        region.view[9 * PAGE_SIZE] = region.view[9 * PAGE_SIZE]  # stored, unchanged
        touch(region, 20)
        assert pages_of(kernel.collect()) == {"a": [2, 9, 20]}
        assert pages_of(hashing.collect()) == {"a": [2, 20]}
    finally:
        kernel.close()
        hashing.close()


def test_a_store_racing_collect_is_reported_by_it_or_the_next(
    tracker: DirtyTracker, regions: RegionSet
) -> None:
    """A writer thread stores into every page while collect runs; the union misses none."""
    region = regions.allocate("a", 2048 * PAGE_SIZE)
    tracker.track(region)
    done = threading.Event()

    def writer() -> None:
        for _ in range(3):
            for page in range(region.pages):
                touch(region, page)
        done.set()

    seen: set[int] = set()
    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        seen.update(pages_of(tracker.collect())["a"])
    thread.join(timeout=30)
    seen.update(pages_of(tracker.collect())["a"])
    assert seen == set(range(region.pages))


def test_open_tracker_prefers_the_kernel_here() -> None:
    chosen = open_tracker()
    try:
        assert chosen.kind is TrackerKind.KERNEL
    finally:
        chosen.close()


def test_open_tracker_falls_back_to_hashing_with_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Stands in for a kernel without PAGEMAP_SCAN (the real probe runs above).
    monkeypatch.setattr(uffd, "kernel_tracking_unsupported", lambda: "PAGEMAP_SCAN is missing.")
    caplog.set_level(logging.INFO, logger=tracking.__name__)
    chosen = open_tracker()
    assert chosen.kind is TrackerKind.HASH
    assert any("falling back to per-page hashing" in r.getMessage() for r in caplog.records)
    with pytest.raises(UsageError, match="PAGEMAP_SCAN is missing"):
        open_tracker(TrackerKind.KERNEL)
    assert open_tracker(TrackerKind.HASH).kind is TrackerKind.HASH


def test_close_is_idempotent(tracker: DirtyTracker, regions: RegionSet) -> None:
    tracker.track(regions.allocate("a", PAGE_SIZE))
    tracker.close()
    tracker.close()


def test_the_kernel_scan_as_arrays_agrees_with_hashing(regions: RegionSet) -> None:
    """`collect_arrays` (what the capture uses) against the hashing tracker on the same stores."""
    kernel, hashing = KernelTracker(), HashTracker()
    try:
        sizes = {"a": 3, "b": 300, "c": 5000}
        for name, pages in sizes.items():
            region = regions.allocate(name, pages * PAGE_SIZE)
            kernel.track(region)
            hashing.track(region)
        rng = np.random.default_rng(7)
        for _ in range(6):
            for name, pages in sizes.items():
                for page in rng.integers(0, pages, int(rng.integers(0, pages // 2 + 2))):
                    touch(regions[name], int(page), int(rng.integers(0, PAGE_SIZE)))
            arrays = {
                name: [p for s, c in zip(starts, counts, strict=True) for p in range(s, s + c)]
                for name, starts, counts in kernel.collect_arrays()
            }
            assert arrays == pages_of(hashing.collect())
    finally:
        kernel.close()
        hashing.close()

"""Random write patterns over several regions: what each tracker must report.

The kernel tracker reports exactly the pages stored to; the hashing tracker
exactly the pages whose bytes changed; both at least every changed page.
Both trackers watch the same regions at once, so each example also checks
them against each other.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servergroup.replication.pages import canonical_runs, from_runs
from servergroup.replication.regions import PAGE_SIZE, RegionSet
from servergroup.replication.tracking import HashTracker
from servergroup.replication.uffd import KernelTracker

pytestmark = pytest.mark.timeout(120)

SIZES = {"small": 3, "mid": 40, "large": 300}


class Rig:
    def __init__(self) -> None:
        self.regions = RegionSet()
        for name, pages in SIZES.items():
            self.regions.allocate(name, pages * PAGE_SIZE)
        self.kernel = KernelTracker()
        self.hashing = HashTracker()
        for region in self.regions:
            self.kernel.track(region)
            self.hashing.track(region)

    def close(self) -> None:
        self.kernel.close()
        self.hashing.close()
        self.regions.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    made = Rig()
    yield made
    made.close()


# One store: (region, byte offset, bytes, keep-the-bytes-as-they-are)
stores = st.lists(
    st.tuples(
        st.sampled_from(sorted(SIZES)),
        st.integers(0, 2**31),
        st.integers(1, 3 * PAGE_SIZE),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=150)
@given(stores=stores, reset_first=st.booleans())
def test_reported_pages_match_the_stores(
    rig: Rig, stores: list[tuple[str, int, int, bool]], reset_first: bool
) -> None:
    if reset_first:
        rig.kernel.reset()
        rig.hashing.reset()
    else:
        rig.kernel.collect()
        rig.hashing.collect()
    before = {r.name: bytes(r.view) for r in rig.regions}
    stored: dict[str, set[int]] = {name: set() for name in SIZES}
    for name, at, length, same in stores:
        region = rig.regions[name]
        start = at % region.size
        end = min(region.size, start + length)
        chunk = region.view[start:end]
        chunk[:] = bytes(chunk) if same else bytes((b + 1) % 256 for b in chunk)
        stored[name].update(range(start // PAGE_SIZE, (end - 1) // PAGE_SIZE + 1))
    changed = {
        r.name: {
            p
            for p in range(r.pages)
            if r.view[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
            != before[r.name][p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
        }
        for r in rig.regions
    }
    by_kernel = {d.region: d for d in rig.kernel.collect()}
    by_hash = {d.region: d for d in rig.hashing.collect()}
    for name, pages in SIZES.items():
        assert canonical_runs(by_kernel[name].runs, pages)
        assert canonical_runs(by_hash[name].runs, pages)
        assert set(from_runs(by_kernel[name].runs)) == stored[name]
        assert set(from_runs(by_hash[name].runs)) == changed[name]
        assert changed[name] <= stored[name]

"""Tracked regions: names, sizes, views, arrays, closing."""

from __future__ import annotations

import numpy as np
import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.regions import PAGE_SIZE, Region, RegionSet

pytestmark = pytest.mark.timeout(30)


def test_regions_are_whole_pages_and_share_bytes_between_views() -> None:
    regions = RegionSet()
    try:
        region = regions.allocate("table", 10)
        assert region.size == PAGE_SIZE
        assert region.pages == 1
        assert region.address % PAGE_SIZE == 0
        counts = region.array(np.uint32, (4, 8))
        counts[1, 2] = 0xDEADBEEF
        assert bytes(region.view[40:44]) == (0xDEADBEEF).to_bytes(4, "little")
        assert region.page(0)[40] == 0xEF
        del counts
        assert regions.layout == (("table", PAGE_SIZE),)
        assert "table" in regions
        assert [r.name for r in regions] == ["table"]
    finally:
        regions.close()


def test_bad_names_sizes_and_shapes_are_refused() -> None:
    regions = RegionSet()
    try:
        for name in ("", "a/b", "-x", "x" * 65):
            with pytest.raises(UsageError, match="region name"):
                regions.allocate(name, PAGE_SIZE)
        with pytest.raises(UsageError, match="positive size"):
            regions.allocate("zero", 0)
        region = regions.allocate("a", PAGE_SIZE)
        with pytest.raises(UsageError, match="exists already"):
            regions.allocate("a", PAGE_SIZE)
        with pytest.raises(UsageError, match="does not fit"):
            region.array(np.uint64, (PAGE_SIZE,))
        with pytest.raises(UsageError, match="outside region"):
            region.run(0, 2)
        with pytest.raises(UsageError, match="no region"):
            regions["b"]
    finally:
        regions.close()


@pytest.mark.parametrize("holder", ["array", "slice"])
def test_a_region_in_use_is_not_unmapped_under_its_users(holder: str) -> None:
    region = Region("busy", PAGE_SIZE)
    used = region.array(np.uint8) if holder == "array" else region.view[0:10]
    with pytest.raises(UsageError, match="still has views or arrays"):
        region.close()
    assert not region.closed
    region.view[0] = 9  # still usable
    del used
    region.close()
    assert region.closed
    region.close()
    with pytest.raises(UsageError, match="closed"):
        _ = region.view

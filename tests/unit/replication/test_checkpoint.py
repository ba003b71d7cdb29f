"""The memory data path: capture on the primary, the wire, the backup's machine, apply.

Real regions, real trackers (the kernel's and hashing), real encoding: the
backup's regions must equal the primary's at each capture.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.backup_machine import (
    ApplyCheckpoint,
    BackupConfig,
    BackupMachine,
    SendAck,
)
from servergroup.replication.checkpoint import Capturer, apply, page_index
from servergroup.replication.protocol import (
    EpochBegin,
    EpochDigest,
    Hello,
    Message,
    MessageDecoder,
    Pages,
    encode_parts,
)
from servergroup.replication.regions import PAGE_SIZE, RegionSet
from servergroup.replication.tracking import DirtyTracker, HashTracker
from servergroup.replication.uffd import KernelTracker

pytestmark = pytest.mark.timeout(60)

LAYOUT = {"small": 3, "table": 700, "log": 64}


@pytest.fixture(params=["kernel", "hash"])
def tracker(request: pytest.FixtureRequest) -> Iterator[DirtyTracker]:
    made: DirtyTracker = KernelTracker() if request.param == "kernel" else HashTracker()
    yield made
    made.close()


def make_regions() -> RegionSet:
    regions = RegionSet()
    for name, pages in LAYOUT.items():
        regions.allocate(name, pages * PAGE_SIZE)
    return regions


def test_page_index_expands_runs_in_order() -> None:
    assert page_index(((5, 2), (9, 1), (0, 3))).tolist() == [5, 6, 9, 0, 1, 2]
    assert page_index(()).tolist() == []


def test_epochs_shipped_over_the_wire_rebuild_the_primary_exactly(tracker: DirtyTracker) -> None:
    primary, backup = make_regions(), make_regions()
    try:
        for region in primary:
            tracker.track(region)
        capturer = Capturer(primary, tracker)
        machine = BackupMachine(
            BackupConfig(service="t", page_size=PAGE_SIZE, regions=backup.layout),
            generation=0,
            now=0.0,
        )
        hello = Hello(
            service="t", generation=1, page_size=PAGE_SIZE, disk_size=0, regions=primary.layout
        )
        machine.received(hello, 0.0)
        rng = random.Random(5)
        decoder = MessageDecoder()
        for epoch in range(1, 8):
            for _ in range(rng.randrange(0, 300)):
                region = primary[rng.choice(sorted(LAYOUT))]
                at = rng.randrange(region.size)
                region.view[at] = (region.view[at] + 1 + rng.randrange(255)) % 256
            if epoch == 4:  # a burst: whole stretches of a region
                primary["table"].array(np.uint32)[1000:200000] += 7
            captured = capturer.capture(full=epoch == 1)
            expected = {r.name: bytes(r.view) for r in primary}
            # The next epoch runs before the stream goes out: the copy must not see it.
            primary["small"].view[0] = (primary["small"].view[0] + 1) % 256
            begin = EpochBegin(generation=1, epoch=epoch, full=captured.full)
            digest = EpochDigest()
            wire = bytearray()
            stream: list[Message] = [begin, *captured.messages(max_data_bytes=64 * PAGE_SIZE)]
            for message in stream:
                if isinstance(message, Pages):
                    digest.add(message)
                wire += b"".join(encode_parts(message))
            wire += b"".join(encode_parts(digest.end(epoch)))
            received: list[Message] = []
            for start in range(0, len(wire), 65536):
                received += decoder.feed(wire[start : start + 65536])
            actions = [a for m in received for a in machine.received(m, float(epoch))]
            assert isinstance(actions[0], ApplyCheckpoint)
            assert actions[1] == SendAck(generation=1, epoch=epoch)
            apply(backup, actions[0].pages)
            assert {r.name: bytes(r.view) for r in backup} == expected
    finally:
        primary.close()
        backup.close()


def test_apply_refuses_pages_that_do_not_fit() -> None:
    regions = make_regions()
    try:
        with pytest.raises(UsageError, match="does not exist"):
            apply(regions, [Pages(region=9, runs=((0, 1),), data=b"x" * PAGE_SIZE)])
        with pytest.raises(UsageError, match="outside region"):
            apply(regions, [Pages(region=0, runs=((2, 2),), data=b"x" * 2 * PAGE_SIZE)])
        with pytest.raises(UsageError, match="not the pages"):
            apply(regions, [Pages(region=0, runs=((0, 1),), data=b"x")])
    finally:
        regions.close()

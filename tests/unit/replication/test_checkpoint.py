"""The memory data path: capture on the primary, the wire, the backup's machine, apply.

Real regions, real trackers (the kernel's and hashing), real encoding: the
backup's regions must equal the primary's at each capture.
"""

from __future__ import annotations

import os
import random
import threading
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
from servergroup.replication.checkpoint import Captured, Capturer, apply, page_index
from servergroup.replication.pages import DirtyPages
from servergroup.replication.protocol import (
    EpochBegin,
    EpochDigest,
    Hello,
    Message,
    MessageDecoder,
    Pages,
    encode_parts,
)
from servergroup.replication.regions import PAGE_SIZE, Region, RegionSet
from servergroup.replication.tracking import DirtyTracker, HashTracker, TrackerKind
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
            for step in range(rng.randrange(0, 300)):
                region = primary[rng.choice(sorted(LAYOUT))]
                at = rng.randrange(region.size)
                region.view[at] = (region.view[at] + 1 + rng.randrange(255)) % 256
                if capturer.can_precopy and step % 50 == 49:
                    capturer.precopy()  # some pages copied early, some written again after
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


def _apply_epoch(machine: BackupMachine, backup: RegionSet, captured: Captured, epoch: int) -> None:
    """`captured` through the wire and the backup machine into `backup`."""
    begin = EpochBegin(generation=1, epoch=epoch, full=captured.full)
    digest = EpochDigest()
    stream: list[Message] = [begin, *captured.messages()]
    for message in stream:
        if isinstance(message, Pages):
            digest.add(message)
    stream.append(digest.end(epoch))
    actions = [a for m in stream for a in machine.received(m, float(epoch))]
    assert isinstance(actions[0], ApplyCheckpoint)
    assert actions[1] == SendAck(generation=1, epoch=epoch)
    apply(backup, actions[0].pages)


def test_stores_racing_the_copies_never_reach_the_checkpoint() -> None:
    """A thread stores into the pages while they are pre-copied and while they are gathered.

    The pre-copy rounds run beside a writer (the epoch running); the
    writer stops (the suspend) and the capture is taken; then the writer
    runs again (the next epoch, resumed) while the pages are gathered out
    of the shadows and a pre-copy round tries to start. The backup must get
    exactly the regions as they were at the suspend, epoch after epoch.
    """
    primary, backup = make_regions(), make_regions()
    tracker = KernelTracker()
    try:
        for region in primary:
            tracker.track(region)
        capturer = Capturer(primary, tracker)
        machine = BackupMachine(
            BackupConfig(service="t", page_size=PAGE_SIZE, regions=backup.layout),
            generation=0,
            now=0.0,
        )
        machine.received(
            Hello(service="t", generation=1, page_size=PAGE_SIZE, disk_size=0,
                  regions=primary.layout),
            0.0,
        )  # fmt: skip
        arrays = [primary["table"].array(np.uint64), primary["small"].array(np.uint64)]
        rng = np.random.default_rng(15)

        wrote = threading.Event()

        def write(stop: threading.Event) -> None:
            while not stop.is_set():
                for array, stores in zip(arrays, (64, 4), strict=True):
                    array[rng.integers(0, len(array), stores)] += np.uint64(1)
                wrote.set()

        def precopy_after_a_write() -> int:
            wrote.clear()
            assert wrote.wait(timeout=30)
            return capturer.precopy()

        def running(stop: threading.Event) -> threading.Thread:
            thread = threading.Thread(target=write, args=(stop,), daemon=True)
            thread.start()
            return thread

        _apply_epoch(machine, backup, capturer.capture(full=True), 1)
        for epoch in range(2, 12):
            stop = threading.Event()
            writer = running(stop)
            copied = sum(precopy_after_a_write() for _ in range(5))
            stop.set()
            writer.join(timeout=30)  # suspended
            captured = capturer.capture(full=False)
            expected = {r.name: bytes(r.view) for r in primary}
            stop = threading.Event()
            writer = running(stop)  # resumed: the next epoch writes the same pages
            assert capturer.precopy() == 0  # the shadows still hold this epoch
            gathered = threading.Thread(target=captured.messages)
            gathered.start()
            gathered.join(timeout=30)
            stop.set()
            writer.join(timeout=30)
            _apply_epoch(machine, backup, captured, epoch)
            assert {r.name: bytes(r.view) for r in backup} == expected
            assert copied > 0  # the rounds did copy pages that were then written again
        arrays.clear()  # the regions close only without views
    finally:
        tracker.close()
        primary.close()
        backup.close()


def test_precopy_is_refused_with_the_hashing_tracker() -> None:
    regions = make_regions()
    tracker = HashTracker()
    try:
        for region in regions:
            tracker.track(region)
        capturer = Capturer(regions, tracker)
        assert not capturer.can_precopy
        with pytest.raises(UsageError, match="every store"):
            capturer.precopy()
    finally:
        tracker.close()
        regions.close()


def test_a_capture_is_gathered_only_before_the_next_one() -> None:
    regions = make_regions()
    tracker = KernelTracker()
    try:
        for region in regions:
            tracker.track(region)
        capturer = Capturer(regions, tracker)
        first = capturer.capture(full=True)
        regions["small"].view[0] = 1
        second = capturer.capture(full=False)
        with pytest.raises(UsageError, match="before the next capture"):
            first.messages()
        assert [m.runs for m in second.messages()] == [((0, 1),)]
        assert second.messages()[0].data[0] == 1  # gathered once, cut again
    finally:
        tracker.close()
        regions.close()


class _PolicyRecorder:
    """The real kernel tracker, noting this thread's scheduling policy at each collect."""

    def __init__(self, inner: KernelTracker) -> None:
        self.inner = inner
        self.policies: list[int] = []

    @property
    def kind(self) -> TrackerKind:
        return self.inner.kind

    def track(self, region: Region) -> None:
        self.inner.track(region)

    def untrack(self, region: Region) -> None:
        self.inner.untrack(region)

    def collect(self) -> list[DirtyPages]:
        self.policies.append(os.sched_getscheduler(0))
        return self.inner.collect()

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("realtime", [True, False])
def test_an_incremental_capture_runs_at_real_time_priority_and_restores_the_thread(
    realtime: bool,
) -> None:
    """Where the process may raise it (root here), the pause is not preempted by ordinary work."""
    regions = make_regions()
    recorder = _PolicyRecorder(KernelTracker())
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        for region in regions:
            recorder.track(region)
        capturer = Capturer(regions, recorder, realtime=realtime)
        capturer.capture(full=True).messages()
        assert capturer.last_realtime is False  # a full capture is long: never at real time
        regions["table"].view[5 * PAGE_SIZE] = 1
        captured = capturer.capture(full=False)
        assert [r.runs for r in captured.regions] == [((5, 1),)]
        captured.messages()
        expected = os.SCHED_FIFO if realtime and os.geteuid() == 0 else os.SCHED_BATCH
        assert recorder.policies[-1] == expected
        assert capturer.last_realtime is (expected == os.SCHED_FIFO)
        assert os.sched_getscheduler(0) == os.SCHED_BATCH  # given back as it was
    finally:
        os.sched_setscheduler(0, before[0], os.sched_param(0))
        recorder.close()
        regions.close()
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before

"""Capturing a checkpoint on the primary and applying it on the backup: the memory data path.

Theory of operation. At postsuspend the primary must copy this epoch's
changed pages out of the regions before it resumes, because the next epoch
runs speculatively and would change them while they are streamed (Remus
copies to a local buffer for the same reason). `Capturer.capture` does only
what must happen inside the pause:

1. collect the tracker, which restarts tracking for the next epoch in the
   same step (for a full checkpoint: take every page and reset it);
2. copy the pages of each region into the capture buffer, one memcpy per
   run (measured faster here than a NumPy gather, which copies row by row).

Cutting the copy into `Pages` messages (`Captured.messages`) is left for
after resume. The capture buffer is reused from one capture to the next and
was written once when it grew, so the copy does not pay a page fault per
page of fresh memory (which cost more than the copy itself). Hence the
rule: **a capture's data is valid until the next capture**. The primary
captures epoch n + 1 only after epoch n was acknowledged or abandoned, so
this holds.

The backup's `apply` writes the pages of a complete epoch into its own
regions of the same layout, with one NumPy scatter per message. Both sides
name regions by their index in the layout the hello carried
(`RegionSet.layout`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from servergroup.common.errors import UsageError
from servergroup.replication.pages import PageRuns, batch_runs, page_count
from servergroup.replication.protocol import MAX_DATA_BYTES, MAX_RUNS, Pages
from servergroup.replication.regions import PAGE_SIZE, Region, RegionSet
from servergroup.replication.tracking import DirtyTracker


def page_index(runs: PageRuns) -> npt.NDArray[np.int64]:
    """Every page index of `runs`, in order, built without a Python loop per run."""
    if not runs:
        return np.empty(0, dtype=np.int64)
    table = np.array(runs, dtype=np.int64)
    starts, counts = table[:, 0], table[:, 1]
    offsets = np.cumsum(counts) - counts
    index: npt.NDArray[np.int64] = np.arange(int(counts.sum()), dtype=np.int64)
    index += np.repeat(starts - offsets, counts)
    return index


def _pages_of(region: Region) -> npt.NDArray[np.uint8]:
    return region.array(np.uint8).reshape(region.pages, PAGE_SIZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class CapturedRegion:
    index: int
    runs: PageRuns
    data: memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class Captured:
    """The pages of one epoch, copied out of the regions (valid until the next capture)."""

    full: bool
    regions: tuple[CapturedRegion, ...]
    pages: int

    @property
    def size(self) -> int:
        return self.pages * PAGE_SIZE

    def messages(self, max_data_bytes: int = MAX_DATA_BYTES) -> Iterator[Pages]:
        """The capture as `Pages` messages, each a view into the capture buffer."""
        max_pages = max(1, max_data_bytes // PAGE_SIZE)
        for captured in self.regions:
            at = 0
            for batch in batch_runs(captured.runs, max_pages, MAX_RUNS):
                size = page_count(batch) * PAGE_SIZE
                yield Pages(region=captured.index, runs=batch, data=captured.data[at : at + size])
                at += size


class Capturer:
    """Copies each epoch's pages out of `regions` into one reused buffer."""

    def __init__(self, regions: RegionSet, tracker: DirtyTracker) -> None:
        self._regions = regions
        self._tracker = tracker
        self._buffer = bytearray()

    def _room(self, pages: int) -> memoryview:
        size = pages * PAGE_SIZE
        if len(self._buffer) < size:
            grown = bytearray(max(size, 2 * len(self._buffer)))
            # Fault every page in now, not inside a pause.
            np.frombuffer(grown, dtype=np.uint8)[::PAGE_SIZE] = 1
            self._buffer = grown
        return memoryview(self._buffer)

    def capture(self, *, full: bool) -> Captured:
        """Copy this epoch's pages (or all of them); restarts the tracker."""
        regions = list(self._regions)
        dirty: dict[str, PageRuns]
        if full:
            self._tracker.reset()
            dirty = {r.name: ((0, r.pages),) for r in regions}
        else:
            dirty = {d.region: d.runs for d in self._tracker.collect()}
        total = sum(page_count(dirty.get(r.name, ())) for r in regions)
        flat = self._room(total)
        out: list[CapturedRegion] = []
        at = 0
        for index, region in enumerate(regions):
            runs = dirty.get(region.name, ())
            count = page_count(runs)
            if not count:
                continue
            view = region.view
            start = at * PAGE_SIZE
            to = start
            for first, length in runs:
                size = length * PAGE_SIZE
                flat[to : to + size] = view[first * PAGE_SIZE : first * PAGE_SIZE + size]
                to += size
            data = flat[start:to]
            out.append(CapturedRegion(index=index, runs=runs, data=data))
            at += count
        return Captured(full=full, regions=tuple(out), pages=total)


def apply(regions: RegionSet, messages: Iterable[Pages]) -> int:
    """Write `Pages` messages into `regions` (by layout index); returns the bytes written."""
    ordered = list(regions)
    written = 0
    for message in messages:
        if message.region >= len(ordered):
            raise UsageError(f"region number {message.region} does not exist here.")
        region = ordered[message.region]
        index = page_index(message.runs)
        if len(message.data) != len(index) * PAGE_SIZE:
            raise UsageError("a Pages message's data is not the pages its runs name.")
        if len(index) and (index.min() < 0 or index.max() >= region.pages):
            raise UsageError(f"a Pages message names pages outside region {region.name!r}.")
        source = np.frombuffer(message.data, dtype=np.uint8).reshape(len(index), PAGE_SIZE)
        _pages_of(region)[index] = source
        written += len(message.data)
    return written

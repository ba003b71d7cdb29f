"""Dirty-page tracking: which pages of the tracked regions were written since the last checkpoint.

Theory of operation. A checkpoint ships only the pages that changed during
its epoch. Two implementations sit behind the `DirtyTracker` protocol and
pass one contract suite (tests/unit/replication/test_tracking_contract.py):

- `KernelTracker` (`replication.uffd`): the kernel write-protects every
  tracked page (userfaultfd, async write-protect mode); the first store to a
  page clears its protection without a signal or a thread, and
  `PAGEMAP_SCAN` lists the pages that lost it and protects them again, in
  one atomic step. Cost: about 1 µs on the first store to a page per epoch,
  and a scan proportional to what was written.
- `HashTracker` (here): keeps an xxh3 digest of every page and reports the
  pages whose digest changed. It needs no kernel support, reads every page
  every epoch, and cannot see a store that leaves a page's bytes as they
  were (nor, with negligible probability, a 64-bit collision).

The contract, for every tracked region, between two calls of `collect` (or
`track`/`reset` and `collect`):

- **No change is missed**: every page whose bytes differ from what they
  were at the previous collect is reported.
- `KernelTracker` reports **exactly** the pages stored to (a store of the
  same bytes counts). `HashTracker` reports **exactly** the pages whose
  bytes changed, which is a subset of the pages stored to; for replication
  both are enough, since an unchanged page needs no shipping.
- A store that races a `collect` is reported by that collect or the next,
  never lost (the kernel re-protects atomically; a hash taken before a
  store differs from the page after it).

Only stores through the region's mapping count (see `replication.regions`).
`open_tracker` picks the kernel tracker where the kernel supports it and
falls back to hashing with one log line saying why.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol

import numpy as np
import numpy.typing as npt
import xxhash

from servergroup.common.errors import UsageError
from servergroup.replication.pages import DirtyPages, PageRuns
from servergroup.replication.regions import PAGE_SIZE, Region

log = logging.getLogger(__name__)


class TrackerKind(enum.Enum):
    """Which mechanism finds dirty pages."""

    KERNEL = "kernel"
    HASH = "hash"


class DirtyTracker(Protocol):
    """Finds the pages of tracked regions written since the last collect."""

    @property
    def kind(self) -> TrackerKind: ...

    def track(self, region: Region) -> None:
        """Start tracking `region`: every page counts as clean from now on."""

    def untrack(self, region: Region) -> None:
        """Stop tracking `region` (before it is closed)."""

    def collect(self) -> list[DirtyPages]:
        """The pages written since the last collect, per tracked region; starts the next period."""

    def reset(self) -> None:
        """Forget what was written so far: the next collect reports only later writes."""

    def close(self) -> None:
        """Stop tracking everything and release kernel resources."""


def runs_of(flags: npt.NDArray[np.bool_]) -> PageRuns:
    """The runs of True in a boolean array of pages."""
    if not flags.any():
        return ()
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts = edges[0::2]
    ends = edges[1::2]
    return tuple((int(s), int(e - s)) for s, e in zip(starts, ends, strict=True))


def hash_pages(region: Region) -> npt.NDArray[np.uint64]:
    """The xxh3-64 digest of every page of `region`."""
    digest = xxhash.xxh3_64_intdigest
    view = region.view
    return np.fromiter(
        (digest(view[at : at + PAGE_SIZE]) for at in range(0, region.size, PAGE_SIZE)),
        dtype=np.uint64,
        count=region.pages,
    )


class HashTracker:
    """The fallback: per-page xxh3 digests compared at every collect."""

    def __init__(self) -> None:
        self._digests: dict[str, tuple[Region, npt.NDArray[np.uint64]]] = {}

    @property
    def kind(self) -> TrackerKind:
        return TrackerKind.HASH

    def track(self, region: Region) -> None:
        if region.name in self._digests:
            raise UsageError(f"region {region.name!r} is tracked already.")
        self._digests[region.name] = (region, hash_pages(region))

    def untrack(self, region: Region) -> None:
        self._digests.pop(region.name, None)

    def collect(self) -> list[DirtyPages]:
        out: list[DirtyPages] = []
        for name, (region, before) in self._digests.items():
            now = hash_pages(region)
            self._digests[name] = (region, now)
            out.append(DirtyPages(region=name, runs=runs_of(now != before)))
        return out

    def reset(self) -> None:
        for name, (region, _) in self._digests.items():
            self._digests[name] = (region, hash_pages(region))

    def close(self) -> None:
        self._digests.clear()


def open_tracker(kind: TrackerKind | None = None) -> DirtyTracker:
    """A tracker of `kind`, or the best this kernel supports when `kind` is None.

    Asking for KERNEL where the kernel cannot do it raises `UsageError`;
    with None, the fallback to hashing is logged once with the reason.
    """
    # Imported here: the kernel interface is only loaded where it is used.
    from servergroup.replication.uffd import KernelTracker, kernel_tracking_unsupported

    if kind is TrackerKind.HASH:
        return HashTracker()
    reason = kernel_tracking_unsupported()
    if reason is None:
        log.info("dirty-page tracking: kernel write-protect (userfaultfd + PAGEMAP_SCAN)")
        return KernelTracker()
    if kind is TrackerKind.KERNEL:
        raise UsageError(f"kernel dirty-page tracking is not available: {reason}")
    log.warning(
        "dirty-page tracking: falling back to per-page hashing, slower per epoch: %s", reason
    )
    return HashTracker()

"""Capturing a checkpoint on the primary and applying it on the backup: the memory data path.

Theory of operation. An epoch's checkpoint must hold every page written in
the epoch *as it was at the suspend*, while the next epoch already runs
speculatively and changes pages again (Remus copies to a local buffer for
the same reason). `Capturer` keeps a **shadow** of each region (same size,
same page offsets) and copies pages into it:

1. **Pre-copy** (`Capturer.precopy`, while the epoch runs, from a worker
   thread; kernel tracker only): collect the pages written so far (the
   scan re-protects them), copy them into the shadow, remember them as
   this epoch's. A page written again after its round is reported again by
   the next round or by the capture, and copied again.
2. **Capture** (`Capturer.capture`, inside the pause): collect once more
   and copy only what was written since the last round; the epoch's pages
   are those plus every pre-copied one. Every page of the epoch thus holds
   its content at the suspend: a page written after its last copy was
   reported again, and nothing is written during the pause.

This is live migration's iterative pre-copy done inside each epoch: the
pause pays a scan plus the copy of the pages written since the last round,
not of the whole epoch. Copy-on-write through write-protect faults (QEMU's
background snapshot) would move the copy after the resume instead, but not
from Python: the thread that faults holds the GIL, so the handler must be
another process, and a userfaultfd without `WP_ASYNC` cannot re-protect
the dirty pages in one `PAGEMAP_SCAN` (it takes one ioctl per run, or one
over the whole region: ~2-6 ms for 256 MiB here, more than the goal).
The hashing tracker gets no pre-copy: it reports pages whose bytes differ
from the last collect, and a page changed and changed back around a
pre-copy would keep the changed copy. With it the whole copy is in the
pause, as before.

Copies go region -> shadow with `process_vm_readv` on this process, up to
1024 runs a call and without the GIL, so a pre-copy round runs beside the
event loop (a slice assignment per run where the call is refused).

The capture runs at real-time priority (`SCHED_FIFO` 1, for the calling
thread, restored after) where the process may raise it: on a machine busy
with other work, an ordinary thread is preempted in the middle of a pause
for whole time slices, which made the tail of the pause several times its
median (bench/replication.py measures both). Only an incremental capture
with the kernel tracker does it: the section is then bounded (one collect
and the copy of what is left), and the kernel's real-time
throttling keeps it from starving the machine. `realtime=False` turns it
off; where the call is refused (no `CAP_SYS_NICE`, no `RLIMIT_RTPRIO`) the
capture runs at the thread's own priority.

Why not copy-on-write instead (measured by bench/replication.py's
`arming` part, in docs/design/replication.md): the pause would have to
arm the epoch's pages so that a later store reaches a handler, and every
way to do that here costs about as much as the copy it saves for a burst
of scattered pages.

After resume `Captured.messages` gathers the epoch's pages out of the
shadow into one reused staging buffer (one NumPy take per region) and cuts
them into `Pages` messages. The rules that keep this exact, enforced here:
a pre-copy round waits for the capture before it to be gathered (it would
overwrite the shadow), a capture waits for a running round (one lock), and
**a capture's messages are valid until the next capture is gathered**. The
primary gathers epoch n + 1 only after epoch n was sent (one checkpoint in
flight), so this holds.

The backup's `apply` writes the pages of a complete epoch into its own
regions of the same layout, with one NumPy scatter per message. Both sides
name regions by their index in the layout the hello carried
(`RegionSet.layout`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from servergroup.common.errors import UsageError
from servergroup.replication.pages import PageRuns, batch_runs, page_count
from servergroup.replication.protocol import MAX_DATA_BYTES, MAX_RUNS, Pages
from servergroup.replication.regions import PAGE_SIZE, Region, RegionSet
from servergroup.replication.tracking import DirtyTracker, TrackerKind, runs_of
from servergroup.replication.uffd import KernelTracker

log = logging.getLogger(__name__)

#: Most iovecs one process_vm_readv call takes (IOV_MAX).
IOV_MAX = 1024
#: The SCHED_FIFO priority of a capture (the lowest: above every ordinary thread).
CAPTURE_PRIORITY = 1
_REALTIME_REFUSED_LOGGED = False


@contextlib.contextmanager
def urgent() -> Iterator[bool]:
    """Run the block at real-time priority on this thread where allowed; yields whether it does.

    A thread already real-time keeps its own policy. The policy and
    priority (and so the nice value) the thread had are restored after.
    """
    global _REALTIME_REFUSED_LOGGED
    try:
        policy = os.sched_getscheduler(0)
        param = os.sched_getparam(0)
    except OSError:
        yield False
        return
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        yield True
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(CAPTURE_PRIORITY))
    except OSError as exc:
        if not _REALTIME_REFUSED_LOGGED:
            _REALTIME_REFUSED_LOGGED = True
            log.info("the checkpoint pause runs at ordinary priority: %s", exc.strerror or exc)
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, policy, param)


def page_index(runs: PageRuns) -> npt.NDArray[np.int64]:
    """Every page index of `runs`, in order, built without a Python loop per run."""
    if not runs:
        return np.empty(0, dtype=np.int64)
    table = np.array(runs, dtype=np.int64)
    return _expand(table[:, 0], table[:, 1])


def _expand(starts: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Every page index of the runs (starts[i], counts[i]), in order."""
    offsets = np.cumsum(counts) - counts
    index: npt.NDArray[np.int64] = np.arange(int(counts.sum()), dtype=np.int64)
    index += np.repeat(starts - offsets, counts)
    return index


def _pages_of(region: Region) -> npt.NDArray[np.uint8]:
    return region.array(np.uint8).reshape(region.pages, PAGE_SIZE)


class _VmReader:
    """`process_vm_readv` on this process: many runs copied in one call, without the GIL."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        call = None
        try:
            call = ctypes.CDLL(None, use_errno=True).process_vm_readv
        except (OSError, AttributeError):
            pass
        else:
            call.argtypes = [
                ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong,
            ]  # fmt: skip
            call.restype = ctypes.c_ssize_t
        self._call = call

    def copy(
        self, source: int, target: int, starts: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]
    ) -> bool:
        """Copy pages [start, start + count) of `source` to the same pages of `target` (addresses).

        False when the system call is refused here (the caller copies another way).
        """
        if self._call is None:
            return False
        lengths = counts.astype(np.uint64) * PAGE_SIZE
        offsets = starts.astype(np.uint64) * PAGE_SIZE
        remote = np.empty((len(starts), 2), dtype=np.uint64)
        remote[:, 0] = offsets + np.uint64(source)
        remote[:, 1] = lengths
        local = remote.copy()
        local[:, 0] = offsets + np.uint64(target)
        for at in range(0, len(starts), IOV_MAX):
            n = min(IOV_MAX, len(starts) - at)
            want = int(lengths[at : at + n].sum())
            got = self._call(
                self._pid, local.ctypes.data + 16 * at, n, remote.ctypes.data + 16 * at, n, 0
            )
            if got != want:
                if at == 0 and got < 0:
                    self._call = None  # refused (seccomp, an old kernel): never again
                    return False
                raise OSError(ctypes.get_errno(), f"process_vm_readv copied {got} of {want} bytes")
        return True


class CapturedRegion:
    """One region's pages in a capture: which pages, and (after `messages`) their bytes."""

    __slots__ = ("count", "index", "pages")

    def __init__(self, index: int, pages: npt.NDArray[np.bool_]) -> None:
        self.index = index
        #: One flag per page of the region: written in the epoch.
        self.pages = pages
        self.count = int(np.count_nonzero(pages))

    @property
    def runs(self) -> PageRuns:
        return runs_of(self.pages)


class Captured:
    """The pages of one epoch, as they were at the suspend.

    Its messages are valid until the next capture's pages are gathered.
    """

    def __init__(
        self, capturer: Capturer, *, full: bool, regions: tuple[CapturedRegion, ...]
    ) -> None:
        self._capturer = capturer
        self.full = full
        self.regions = regions
        self.pages = sum(r.count for r in regions)
        #: Each region's pages, in page order, in the staging buffer (once gathered).
        self._data: list[memoryview] | None = None

    @property
    def size(self) -> int:
        return self.pages * PAGE_SIZE

    def messages(self, max_data_bytes: int = MAX_DATA_BYTES) -> list[Pages]:
        """The capture as `Pages` messages, each a view into the capturer's staging buffer.

        The first call gathers the pages out of the shadows (after resume;
        it may run in a worker thread) and frees the shadows for pre-copy.
        """
        if self._data is None:
            self._data = self._capturer._gather(self)
        max_pages = max(1, max_data_bytes // PAGE_SIZE)
        out: list[Pages] = []
        for region, data in zip(self.regions, self._data, strict=True):
            at = 0
            for batch in batch_runs(region.runs, max_pages, MAX_RUNS):
                size = page_count(batch) * PAGE_SIZE
                out.append(Pages(region=region.index, runs=batch, data=data[at : at + size]))
                at += size
        return out


class Capturer:
    """Copies each epoch's pages out of `regions` into shadows; see the module docstring."""

    def __init__(self, regions: RegionSet, tracker: DirtyTracker, *, realtime: bool = True) -> None:
        self._regions = regions
        self._tracker = tracker
        self._realtime = realtime
        #: Whether the last capture ran at real-time priority.
        self.last_realtime = False
        self._lock = threading.Lock()
        self._reader = _VmReader()
        self._shadows: dict[str, npt.NDArray[np.uint8]] = {}
        self._copied: dict[str, npt.NDArray[np.bool_]] = {}
        for region in regions:
            shadow = np.empty((region.pages, PAGE_SIZE), dtype=np.uint8)
            shadow[:, 0] = 0  # fault every page in now, not inside a pause
            self._shadows[region.name] = shadow
            self._copied[region.name] = np.zeros(region.pages, dtype=np.bool_)
        self._staging = bytearray()
        #: A capture whose pages are still only in the shadows (pre-copy must wait).
        self._held: Captured | None = None

    @property
    def can_precopy(self) -> bool:
        """Whether `precopy` is sound with this tracker (it must report every store)."""
        return self._tracker.kind is TrackerKind.KERNEL

    @property
    def precopy_ready(self) -> bool:
        """False while the last capture was not yet gathered (`Captured.messages`)."""
        return self._held is None

    def precopy(self) -> int:
        """Copy the pages written so far in this epoch into the shadows; the pages copied.

        Runs beside the service (from a worker thread). Does nothing, and
        returns 0, while the previous capture is not yet gathered.
        """
        if not self.can_precopy:
            raise UsageError("pre-copy needs a tracker that reports every store (the kernel's).")
        with self._lock:
            if self._held is not None:
                return 0
            return self._copy_dirty()

    def capture(self, *, full: bool) -> Captured:
        """This epoch's pages as they are now (call it suspended); restarts the tracker.

        An incremental capture runs at real-time priority where allowed (see
        the module docstring).
        """
        # Not for a full capture (everything: long, and rare) nor with hashing (it reads
        # every page each epoch): only a pause bounded by what was written lately.
        urgent_ok = self._realtime and not full and self.can_precopy
        priority = urgent() if urgent_ok else contextlib.nullcontext(False)
        with priority as realtime, self._lock:
            self.last_realtime = realtime
            regions = list(self._regions)
            out: list[CapturedRegion] = []
            if full:
                self._tracker.reset()
                for index, region in enumerate(regions):
                    self._shadows[region.name][:] = _pages_of(region)
                    self._copied[region.name].fill(False)
                    out.append(CapturedRegion(index, np.ones(region.pages, dtype=np.bool_)))
            else:
                self._copy_dirty()
                for index, region in enumerate(regions):
                    pages = self._copied[region.name]
                    self._copied[region.name] = np.zeros(region.pages, dtype=np.bool_)
                    if pages.any():
                        out.append(CapturedRegion(index, pages))
            captured = Captured(self, full=full, regions=tuple(out))
            self._held = captured
            return captured

    def _collect(self) -> dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
        """The tracker's collect as run starts and counts per region."""
        if isinstance(self._tracker, KernelTracker):  # no Python object per run
            return {name: (s, c) for name, s, c in self._tracker.collect_arrays() if len(s)}
        out = {}
        for dirty in self._tracker.collect():
            if dirty.runs:
                table = np.array(dirty.runs, dtype=np.int64)
                out[dirty.region] = (table[:, 0], table[:, 1])
        return out

    def _copy_dirty(self) -> int:
        """Collect the tracker and copy what it reports into the shadows (lock held)."""
        copied = 0
        found = self._collect()
        for region in self._regions:
            if region.name not in found:
                continue
            starts, counts = found[region.name]
            shadow = self._shadows[region.name]
            if not self._reader.copy(region.address, shadow.ctypes.data, starts, counts):
                source = _pages_of(region)
                for first, count in zip(starts.tolist(), counts.tolist(), strict=True):
                    shadow[first : first + count] = source[first : first + count]
                del source
            self._copied[region.name][_expand(starts, counts)] = True
            copied += int(counts.sum())
        return copied

    def _gather(self, captured: Captured) -> list[memoryview]:
        """`captured`'s pages out of the shadows into the staging buffer, region by region."""
        with self._lock:
            if self._held is not captured:
                raise UsageError("a capture's pages can be gathered only before the next capture.")
            size = captured.size
            if len(self._staging) < size:
                self._staging = bytearray(max(size, 2 * len(self._staging)))
            staging = np.frombuffer(self._staging, dtype=np.uint8)
            names = [r.name for r in self._regions]
            out: list[memoryview] = []
            at = 0
            for region in captured.regions:
                start, end = at * PAGE_SIZE, (at + region.count) * PAGE_SIZE
                rows = staging[start:end].reshape(region.count, PAGE_SIZE)
                shadow = self._shadows[names[region.index]]
                if region.count == len(region.pages):
                    rows[:] = shadow
                else:
                    np.take(shadow, np.flatnonzero(region.pages), axis=0, out=rows)
                out.append(memoryview(self._staging)[start:end])
                at += region.count
            self._held = None
            return out


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

"""The kernel dirty-page tracker: userfaultfd async write-protect plus the PAGEMAP_SCAN ioctl.

Theory of operation (Linux >= 6.7; REFERENCE.md, "Remus"). One userfaultfd
is opened with the features `WP_ASYNC` (a store to a write-protected page
is resolved by the kernel itself: it clears the page's protection and the
store goes on, with no message to read and no thread to run),
`WP_UNPOPULATED` (pages not yet faulted in are protected too) and
`WP_HUGETLBFS_SHMEM` (protection works on memfd/shmem mappings). Each
tracked region is registered in write-protect mode and protected whole.

`collect` then asks `/proc/self/pagemap` with `PAGEMAP_SCAN` for the pages
whose category is `PAGE_IS_WRITTEN` (protection cleared) with the flag
`PM_SCAN_WP_MATCHING`: the kernel lists them and protects them again under
the page-table lock, so a store racing the scan either shows in this scan
or leaves the page unprotected for the next one. The answer comes as
address ranges in a vector we own; a full vector is continued from the
`walk_end` the kernel returns.

Everything goes through `fcntl.ioctl` on packed structs and a ctypes
buffer: no compiled extension. The userfaultfd is opened in user-mode-only
mode where that is all we may do; in async mode that loses nothing, since
the kernel never hands a fault to us (stores by the kernel itself, as in
`recv_into`, clear the protection the same way).

`kernel_tracking_unsupported()` probes once per process and says why in
one sentence, or returns None when the tracker works.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import platform
import struct

import numpy as np
import numpy.typing as npt

from servergroup.common.errors import UsageError
from servergroup.replication.pages import DirtyPages, PageRuns
from servergroup.replication.regions import PAGE_SIZE, Region
from servergroup.replication.tracking import TrackerKind

# <linux/userfaultfd.h>
UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15
FEATURES = UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_ASYNC
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WRITEPROTECT = 0xC018AA06
UFFDIO_REGISTER_MODE_WP = 2
UFFDIO_WRITEPROTECT_MODE_WP = 1
#: /dev/userfaultfd's ioctl that makes a new userfaultfd.
USERFAULTFD_IOC_NEW = 0xAA00
#: userfaultfd(2) where /dev/userfaultfd is missing or closed to us.
SYSCALL_USERFAULTFD = {"x86_64": 323, "aarch64": 282}

# <linux/fs.h>
PAGEMAP_SCAN = 0xC0606610
PM_SCAN_WP_MATCHING = 1
PM_SCAN_CHECK_WPASYNC = 2
PAGE_IS_WRITTEN = 1 << 1

_API = struct.Struct("=QQQ")
_REGISTER = struct.Struct("=QQQQ")
_RANGE = struct.Struct("=QQ")
_WRITEPROTECT = struct.Struct("=QQQ")
_SCAN = struct.Struct("=12Q")
_WALK_END_AT = 32
#: page_region entries per scan call (24 bytes each).
VECTOR_LENGTH = 4096


def _open_userfaultfd() -> int:
    """A new userfaultfd (O_CLOEXEC | O_NONBLOCK), by /dev/userfaultfd or the system call."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        pass
    else:
        try:
            return fcntl.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
        except OSError:
            pass
        finally:
            os.close(dev)
    number = SYSCALL_USERFAULTFD.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"no userfaultfd system call number for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    for mode in (0, UFFD_USER_MODE_ONLY):
        fd = int(libc.syscall(number, flags | mode))
        if fd >= 0:
            return fd
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code))


class KernelTracker:
    """The `DirtyTracker` on userfaultfd write-protect and PAGEMAP_SCAN; see the module doc."""

    def __init__(self) -> None:
        self._uffd = _open_userfaultfd()
        try:
            api = bytearray(_API.pack(UFFD_API, FEATURES, 0))
            fcntl.ioctl(self._uffd, UFFDIO_API, api)
            _, features, _ = _API.unpack(api)
            if features & FEATURES != FEATURES:
                raise OSError(errno.EINVAL, "the kernel lacks userfaultfd async write-protect")
            self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self._uffd)
            raise
        self._vector = (ctypes.c_uint64 * (3 * VECTOR_LENGTH))()
        self._vector_at = ctypes.addressof(self._vector)
        self._regions: dict[str, Region] = {}

    @property
    def kind(self) -> TrackerKind:
        return TrackerKind.KERNEL

    def track(self, region: Region) -> None:
        if region.name in self._regions:
            raise UsageError(f"region {region.name!r} is tracked already.")
        register = _REGISTER.pack(region.address, region.size, UFFDIO_REGISTER_MODE_WP, 0)
        fcntl.ioctl(self._uffd, UFFDIO_REGISTER, bytearray(register))
        protect = _WRITEPROTECT.pack(region.address, region.size, UFFDIO_WRITEPROTECT_MODE_WP)
        try:
            fcntl.ioctl(self._uffd, UFFDIO_WRITEPROTECT, bytearray(protect))
        except BaseException:
            self._unregister(region)
            raise
        self._regions[region.name] = region

    def untrack(self, region: Region) -> None:
        if self._regions.pop(region.name, None) is not None:
            self._unregister(region)

    def _unregister(self, region: Region) -> None:
        if region.closed:
            return  # unmapping dropped the registration with the mapping
        whole = _RANGE.pack(region.address, region.size)
        fcntl.ioctl(self._uffd, UFFDIO_UNREGISTER, bytearray(whole))

    def collect(self) -> list[DirtyPages]:
        return [
            DirtyPages(region=name, runs=self._scan(region))
            for name, region in self._regions.items()
        ]

    def reset(self) -> None:
        for region in self._regions.values():
            self._scan(region)

    def collect_arrays(self) -> list[tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
        """`collect` as (region, first pages, counts) arrays: no Python object per run."""
        return [(name, *self._scan_arrays(region)) for name, region in self._regions.items()]

    def _scan(self, region: Region) -> PageRuns:
        """The written pages of `region`, protecting them again (atomically, per page)."""
        starts, counts = self._scan_arrays(region)
        return tuple(zip(starts.tolist(), counts.tolist(), strict=True))

    def _scan_arrays(self, region: Region) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """`_scan` as arrays of run starts and counts."""
        base = region.address
        end = base + region.size
        start = base
        firsts: list[npt.NDArray[np.uint64]] = []
        stops: list[npt.NDArray[np.uint64]] = []
        flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
        while start < end:
            arg = bytearray(
                _SCAN.pack(
                    _SCAN.size, flags, start, end, 0, self._vector_at, VECTOR_LENGTH,
                    0, 0, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN,
                )
            )  # fmt: skip
            found = fcntl.ioctl(self._pagemap, PAGEMAP_SCAN, arg)
            if found:
                ranges = np.frombuffer(memoryview(self._vector), dtype=np.uint64, count=3 * found)
                firsts.append((ranges[0::3] - base) // PAGE_SIZE)
                stops.append((ranges[1::3] - base) // PAGE_SIZE)
            walk_end: int = struct.unpack_from("=Q", arg, _WALK_END_AT)[0]
            if walk_end <= start:
                break  # the kernel made no progress; never spin
            start = walk_end
        if not firsts:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        return _merge_touching(np.concatenate(firsts), np.concatenate(stops))

    def close(self) -> None:
        if self._uffd < 0:
            return
        for region in list(self._regions.values()):
            self.untrack(region)
        os.close(self._pagemap)
        os.close(self._uffd)
        self._uffd = self._pagemap = -1


def _merge_touching(
    firsts: npt.NDArray[np.uint64], stops: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sorted [first, stop) ranges as run starts and counts, joining touching ranges.

    The kernel merges neighbouring pages itself, but not across two calls of a scan.
    """
    keep = np.ones(len(firsts), dtype=np.bool_)
    keep[1:] = firsts[1:] != stops[:-1]
    heads = np.flatnonzero(keep)
    tails = np.append(heads[1:] - 1, len(firsts) - 1)
    starts = firsts[heads].astype(np.int64)
    counts = stops[tails].astype(np.int64) - starts
    return starts, counts


@functools.cache
def kernel_tracking_unsupported() -> str | None:
    """None where `KernelTracker` works here, else one sentence on why it does not."""
    try:
        tracker = KernelTracker()
    except OSError as exc:
        return f"userfaultfd with async write-protect is unavailable ({exc.strerror or exc})."
    region = None
    try:
        region = Region("probe", 4 * PAGE_SIZE)
        tracker.track(region)
        region.view[2 * PAGE_SIZE] = 1
        found = tracker.collect()
        again = tracker.collect()
    except OSError as exc:
        return f"the PAGEMAP_SCAN ioctl failed ({exc.strerror or exc})."
    finally:
        tracker.close()
        if region is not None:
            region.close()
    if [d.runs for d in found] != [((2, 1),)] or [d.runs for d in again] != [()]:
        return f"the kernel's write-protect scan gave a wrong answer ({found}, {again})."
    return None

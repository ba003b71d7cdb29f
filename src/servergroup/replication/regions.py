"""Tracked regions: the memory a protected service keeps its state in.

Theory of operation. A region is a named, fixed-size, page-aligned block of
shared memory backed by a memfd (`memfd_create`), mapped once into this
process with `MAP_SHARED`. The service reads and writes it only through the
views the framework hands out (`Region.view`, a flat byte `memoryview`, and
`Region.array`, a NumPy array over the same bytes); every store through them
is a store to the mapping, which is what the dirty-page trackers watch.

Why memfd and not anonymous memory: the bytes have a file descriptor, so a
later step can hand the region to another process (a forked service, a
backup rebuilding state) without copying, and the userfaultfd tracker works
on shmem mappings as on anonymous ones (REFERENCE.md, "Remus").

What is *not* seen by a tracker: writes that bypass the mapping (`pwrite`
on the memfd, another process's own mapping of it). Writes by the kernel
into the mapping (`recv_into`, `readv` into a view) are seen.

Invariants: `size` is a positive multiple of `PAGE_SIZE`; the mapping starts
on a page boundary; a region's name is unique within its `RegionSet` and is
what checkpoints call it by. Closing a region while views of it are still
alive raises `UsageError` (the mapping cannot be unmapped under them).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from servergroup.common.errors import UsageError

PAGE_SIZE = mmap.PAGESIZE
#: What a region may be called: it travels in checkpoints and names the memfd.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def round_to_pages(size: int) -> int:
    """`size` rounded up to a whole number of pages."""
    return -(-size // PAGE_SIZE) * PAGE_SIZE


class Region:
    """One named memfd-backed mapping; see the module docstring."""

    def __init__(self, name: str, size: int) -> None:
        if not NAME_PATTERN.fullmatch(name):
            raise UsageError(
                f"region name {name!r} is not 1-64 letters, digits, '_', '.' or '-'"
                " starting with a letter or digit."
            )
        if size <= 0:
            raise UsageError(f"region {name!r} needs a positive size, not {size}.")
        self.name = name
        self.size = round_to_pages(size)
        self._fd = os.memfd_create(f"servergroup-region-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, self.size)
            self._map = mmap.mmap(
                self._fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except BaseException:
            os.close(self._fd)
            raise
        # The address, for the kernel tracker's ioctls. The ctypes object
        # exports the buffer; drop it at once so the mapping can close later.
        anchor = ctypes.c_char.from_buffer(self._map)
        self.address = ctypes.addressof(anchor)
        del anchor
        self._view: memoryview | None = memoryview(self._map)
        self._closed = False

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE

    @property
    def fd(self) -> int:
        """The memfd (owned by the region; closed with it)."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def view(self) -> memoryview:
        """The whole region as writable bytes."""
        if self._view is None:
            raise UsageError(f"region {self.name!r} is closed.")
        return self._view

    def array(self, dtype: npt.DTypeLike = np.uint8, shape: Any = None) -> npt.NDArray[Any]:
        """The region (or its first bytes) as a writable NumPy array of `dtype`.

        With no `shape`, as many items as fit; with one, the array covers
        exactly those items from the start of the region.
        """
        kind = np.dtype(dtype)
        if shape is None:
            count = self.size // kind.itemsize
            return np.frombuffer(self.view, dtype=kind, count=count)
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(dims, dtype=np.int64))
        if count * kind.itemsize > self.size:
            raise UsageError(
                f"an array of shape {dims} of {kind} does not fit region {self.name!r}"
                f" ({self.size} bytes)."
            )
        return np.frombuffer(self.view, dtype=kind, count=count).reshape(dims)

    def page(self, index: int) -> memoryview:
        """The bytes of page `index`."""
        return self.view[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]

    def run(self, first: int, count: int) -> memoryview:
        """The bytes of pages [first, first + count)."""
        if first < 0 or count < 0 or first + count > self.pages:
            raise UsageError(
                f"pages {first}..{first + count} are outside region {self.name!r}"
                f" ({self.pages} pages)."
            )
        return self.view[first * PAGE_SIZE : (first + count) * PAGE_SIZE]

    def close(self) -> None:
        """Unmap and close; raises `UsageError` while exported views are alive."""
        if self._closed:
            return
        try:
            if self._view is not None:
                self._view.release()
                self._view = None
            self._map.close()
        except BufferError as exc:
            if self._view is None:
                self._view = memoryview(self._map)
            raise UsageError(
                f"region {self.name!r} still has views or arrays in use; drop them first."
            ) from exc
        os.close(self._fd)
        self._closed = True

    def __repr__(self) -> str:
        return f"Region({self.name!r}, {self.size})"


class RegionSet:
    """The regions of one service, by name, in the order they were made."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}

    def allocate(self, name: str, size: int) -> Region:
        """A new zero-filled region; `size` is rounded up to whole pages."""
        if name in self._regions:
            raise UsageError(f"region {name!r} exists already.")
        region = Region(name, size)
        self._regions[name] = region
        return region

    def __getitem__(self, name: str) -> Region:
        try:
            return self._regions[name]
        except KeyError:
            raise UsageError(f"there is no region {name!r}.") from None

    def __contains__(self, name: object) -> bool:
        return name in self._regions

    def __iter__(self) -> Iterator[Region]:
        return iter(list(self._regions.values()))

    def __len__(self) -> int:
        return len(self._regions)

    @property
    def layout(self) -> tuple[tuple[str, int], ...]:
        """(name, size) of every region, in order: what a backup must match."""
        return tuple((r.name, r.size) for r in self._regions.values())

    def close(self) -> None:
        """Close every region (see `Region.close`)."""
        for region in list(self._regions.values()):
            region.close()
            del self._regions[region.name]

"""The replicated disk: a fixed-size file the service writes through the framework.

Theory of operation (Remus's replicated disk, seed 004). On the primary,
`write` goes to the local file at once (the service reads its own writes,
speculatively, like memory) and is also logged for the running epoch.
`capture` (postsuspend) hands out the epoch's log as `DiskWrite` messages,
in write order, and starts a new one; `commit` (the commit hook, before
network output) makes the local file durable. On the backup, `apply_writes`
writes a complete epoch's writes, in order, and syncs before returning, so
the backup acknowledges an epoch only once its disk writes are durable.

The disk's contents are therefore always those of some epoch boundary on
the backup, and on the primary those of the running epoch. Writes that
bypass `write` (another handle on the file) are not replicated.

Invariants: a write lies inside `[0, size)`; `capture` returns each logged
write exactly once, cut to `MAX_DATA_BYTES` per message.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from servergroup.common.errors import UsageError
from servergroup.replication.protocol import MAX_DATA_BYTES, DiskWrite


class ReplicatedDisk:
    """See the module docstring."""

    def __init__(self, path: Path, size: int) -> None:
        if size <= 0:
            raise UsageError(f"a replicated disk needs a positive size, not {size}.")
        self.path = path
        self.size = size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise
        self._log: list[DiskWrite] = []
        self.logged_bytes = 0

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise UsageError(
                f"bytes {offset}..{offset + length} are outside the {self.size}-byte disk."
            )

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset` now, and log it for the running epoch."""
        self._check(offset, len(data))
        if not data:
            return
        copy = bytes(data)
        os.pwrite(self._fd, copy, offset)
        self._log.append(DiskWrite(offset=offset, data=copy))
        self.logged_bytes += len(copy)

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return os.pread(self._fd, length, offset)

    def capture(self) -> list[DiskWrite]:
        """The running epoch's writes, in order (cut to message size); starts a new log."""
        out: list[DiskWrite] = []
        for write in self._log:
            data = memoryview(write.data)
            for at in range(0, len(data), MAX_DATA_BYTES):
                out.append(
                    DiskWrite(offset=write.offset + at, data=bytes(data[at : at + MAX_DATA_BYTES]))
                )
        self._log = []
        self.logged_bytes = 0
        return out

    def commit(self) -> None:
        """Make every write so far durable on this host."""
        os.fdatasync(self._fd)

    def apply_writes(self, writes: Iterable[DiskWrite]) -> int:
        """Write a complete epoch's writes in order and sync; returns the bytes written."""
        written = 0
        for write in writes:
            self._check(write.offset, len(write.data))
            os.pwrite(self._fd, write.data, write.offset)
            written += len(write.data)
        os.fdatasync(self._fd)
        return written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

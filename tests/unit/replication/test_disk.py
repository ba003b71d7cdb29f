"""The replicated disk: local writes at once, shipped per epoch, applied in order and synced."""

from __future__ import annotations

from pathlib import Path

import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.disk import ReplicatedDisk
from servergroup.replication.protocol import MAX_DATA_BYTES, DiskWrite

pytestmark = pytest.mark.timeout(30)


def test_epochs_of_writes_rebuild_the_disk_in_order(tmp_path: Path) -> None:
    primary = ReplicatedDisk(tmp_path / "primary.img", 3 * MAX_DATA_BYTES)
    backup = ReplicatedDisk(tmp_path / "backup.img", 3 * MAX_DATA_BYTES)
    try:
        primary.write(10, b"hello")
        primary.write(12, b"LL")  # overlaps the first: order matters
        assert primary.read(10, 5) == b"heLLo"
        first = primary.capture()
        assert first == [DiskWrite(offset=10, data=b"hello"), DiskWrite(offset=12, data=b"LL")]
        assert primary.capture() == []
        big = bytes(range(256)) * (MAX_DATA_BYTES // 128)  # two messages' worth
        primary.write(100, big)
        second = primary.capture()
        assert [len(w.data) for w in second] == [MAX_DATA_BYTES, MAX_DATA_BYTES]
        assert second[1].offset == 100 + MAX_DATA_BYTES
        primary.commit()
        assert backup.apply_writes(first) == 7
        assert backup.read(10, 5) == b"heLLo"
        backup.apply_writes(second)
        assert (tmp_path / "backup.img").read_bytes() == (tmp_path / "primary.img").read_bytes()
    finally:
        primary.close()
        backup.close()


def test_writes_outside_the_disk_are_refused(tmp_path: Path) -> None:
    disk = ReplicatedDisk(tmp_path / "d.img", 100)
    try:
        with pytest.raises(UsageError, match="outside the 100-byte disk"):
            disk.write(98, b"abc")
        with pytest.raises(UsageError):
            disk.apply_writes([DiskWrite(offset=-1, data=b"x")])
        assert disk.capture() == []
    finally:
        disk.close()
    with pytest.raises(UsageError):
        ReplicatedDisk(tmp_path / "e.img", 0)


def test_an_existing_disk_keeps_its_contents(tmp_path: Path) -> None:
    disk = ReplicatedDisk(tmp_path / "d.img", 64)
    disk.write(0, b"kept")
    disk.close()
    again = ReplicatedDisk(tmp_path / "d.img", 64)
    try:
        assert again.read(0, 4) == b"kept"
    finally:
        again.close()

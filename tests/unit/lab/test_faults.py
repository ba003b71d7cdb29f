"""The freezer's files as both cgroup versions lay them out, and the record of a freeze.

The machine the suite runs on has one cgroup version; these check the other's
file layout too (the same files the kernel writes, in a directory of ours).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servergroup.lab.faults import (
    is_frozen,
    record_frozen,
    record_path,
    recorded_frozen,
    set_frozen,
    wants_frozen,
)


def v1(tmp_path: Path, state: str) -> Path:
    (tmp_path / "freezer.state").write_text(f"{state}\n")
    return tmp_path


def v2(tmp_path: Path, *, freeze: str, frozen: str) -> Path:
    (tmp_path / "cgroup.freeze").write_text(f"{freeze}\n")
    (tmp_path / "cgroup.events").write_text(f"populated 1\nfrozen {frozen}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("state", "frozen", "wanted"),
    [("THAWED", False, False), ("FREEZING", None, True), ("FROZEN", True, True)],
)
def test_v1_freezer_state(tmp_path: Path, state: str, frozen: bool | None, wanted: bool) -> None:
    cgroup = v1(tmp_path, state)
    assert is_frozen(cgroup) is frozen
    assert wants_frozen(cgroup) is wanted


@pytest.mark.parametrize(
    ("freeze", "events", "frozen"),
    [("0", "0", False), ("1", "0", None), ("1", "1", True), ("0", "1", None)],
)
def test_v2_frozen_only_once_the_kernel_says_so(
    tmp_path: Path, freeze: str, events: str, frozen: bool | None
) -> None:
    cgroup = v2(tmp_path, freeze=freeze, frozen=events)
    assert is_frozen(cgroup) is frozen
    assert wants_frozen(cgroup) is (freeze == "1")


def test_set_frozen_writes_the_versions_own_file(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    v1(one, "THAWED")
    v2(two, freeze="0", frozen="0")
    set_frozen(one, True)
    set_frozen(two, True)
    assert (one / "freezer.state").read_text() == "FROZEN"
    assert (two / "cgroup.freeze").read_text() == "1"
    set_frozen(one, False)
    set_frozen(two, False)
    assert (one / "freezer.state").read_text() == "THAWED"
    assert (two / "cgroup.freeze").read_text() == "0"


def test_no_cgroup_is_neither_frozen_nor_thawed(tmp_path: Path) -> None:
    assert is_frozen(tmp_path / "gone") is None
    assert not wants_frozen(tmp_path / "gone")


def test_the_record_of_a_freeze(tmp_path: Path) -> None:
    assert recorded_frozen(tmp_path, "sg-h1") == []
    cgroups = [Path("/sys/fs/cgroup/freezer/servergroup/abc/web1"), Path("/x/y")]
    record_frozen(tmp_path, "sg-h1", cgroups)
    assert recorded_frozen(tmp_path, "sg-h1") == cgroups
    assert recorded_frozen(tmp_path, "sg-h2") == []
    record_path(tmp_path, "sg-h1").write_text("{not json")
    assert recorded_frozen(tmp_path, "sg-h1") == []  # unreadable: logged and ignored

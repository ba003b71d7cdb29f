"""One contract for `CpuSysfs`: a lab tree (read and written) and this machine's sysfs (read only).

The kernel's own is written only in a qemu guest (tests/integration/scaling)
and in the real-CPU test (SERVERGROUP_REAL_CPU_TESTS=1).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from servergroup.scaling.cpus import parse_cpu_list
from servergroup.scaling.sysfs import (
    CPU_DIR,
    CpuSysfs,
    CpuSysfsError,
    KernelCpuSysfs,
    LabCpuSysfs,
    make_lab_tree,
    open_cpu_sysfs,
)

Maker = Callable[[], CpuSysfs]


@pytest.fixture(params=["lab", "kernel"])
def readable(request: pytest.FixtureRequest, tmp_path: Path) -> CpuSysfs:
    if request.param == "lab":
        return make_lab_tree(tmp_path, 4)
    return open_cpu_sysfs(Path("/"))


def test_online_and_offline_partition_present(readable: CpuSysfs) -> None:
    online, offline, present = readable.online(), readable.offline(), readable.present()
    assert 0 in online
    assert set(online) | set(offline) == set(present)
    assert not set(online) & set(offline)
    assert set(present) <= set(readable.possible())


def test_cpu_0_has_no_switch_and_is_never_taken_offline(readable: CpuSysfs) -> None:
    assert not readable.can_offline(0)
    with pytest.raises(CpuSysfsError, match="CPU 0 is never taken offline"):
        readable.set_online(0, False)


def test_switches_match_the_online_list(readable: CpuSysfs) -> None:
    root = readable.root / CPU_DIR
    for cpu in readable.present():
        switch = root / f"cpu{cpu}" / "online"
        if switch.exists():
            assert (switch.read_text().strip() == "1") == (cpu in readable.online())


def test_no_such_cpu(readable: CpuSysfs) -> None:
    missing = max(readable.possible()) + 1
    assert not readable.can_offline(missing)
    with pytest.raises(CpuSysfsError, match=f"there is no CPU {missing}"):
        readable.set_online(missing, False)


def test_the_machine_is_a_kernel_not_a_lab_tree() -> None:
    assert isinstance(open_cpu_sysfs(Path("/")), KernelCpuSysfs)


# -- writes: the lab tree ------------------------------------------------------------------


def test_a_new_tree_is_the_kernel_layout(tmp_path: Path) -> None:
    make_lab_tree(tmp_path, 4)
    cpu = tmp_path / CPU_DIR
    assert (cpu / "online").read_text() == "0-3\n"
    assert (cpu / "offline").read_text() == "\n"
    assert (cpu / "present").read_text() == "0-3\n"
    assert (cpu / "possible").read_text() == "0-3\n"
    assert not (cpu / "cpu0" / "online").exists()
    assert (cpu / "cpu3" / "online").read_text() == "1\n"


def test_offline_and_online_update_the_summaries_as_the_kernel_would(tmp_path: Path) -> None:
    tree = make_lab_tree(tmp_path, 6)
    tree.set_online(3, False)
    tree.set_online(5, False)
    cpu = tmp_path / CPU_DIR
    assert (cpu / "online").read_text() == "0-2,4\n"
    assert (cpu / "offline").read_text() == "3,5\n"
    assert (cpu / "cpu3" / "online").read_text() == "0\n"
    tree.set_online(3, False)  # already offline: nothing changes
    assert tree.online() == (0, 1, 2, 4)
    tree.set_online(3, True)
    tree.set_online(3, True)
    assert tree.online() == (0, 1, 2, 3, 4)
    assert tree.offline() == (5,)
    tree.set_online(0, True)  # no switch: always online
    assert tree.online() == (0, 1, 2, 3, 4)


def test_a_tree_made_again_is_a_boot(tmp_path: Path) -> None:
    tree = make_lab_tree(tmp_path, 4)
    tree.set_online(2, False)
    again = make_lab_tree(tmp_path, 2)  # a resize to 2 vCPUs, and a boot
    assert again.online() == (0, 1)
    assert again.present() == (0, 1)
    assert not (tmp_path / CPU_DIR / "cpu2").exists()


def test_a_tree_is_never_made_over_something_else(tmp_path: Path) -> None:
    (tmp_path / CPU_DIR).mkdir(parents=True)
    (tmp_path / CPU_DIR / "online").write_text("0-1\n")
    with pytest.raises(CpuSysfsError, match="not a lab CPU tree"):
        make_lab_tree(tmp_path, 2)
    with pytest.raises(CpuSysfsError, match="not a lab CPU tree"):
        LabCpuSysfs(tmp_path)
    assert isinstance(open_cpu_sysfs(tmp_path), KernelCpuSysfs)


def test_the_real_sysfs_is_refused_as_a_lab_tree() -> None:
    with pytest.raises(CpuSysfsError):
        make_lab_tree(Path("/"), 2)


def test_concurrent_writers_keep_the_summaries_exact(tmp_path: Path) -> None:
    tree = make_lab_tree(tmp_path, 9)
    other = LabCpuSysfs(tmp_path)  # a second writer on the same tree

    def flip(sysfs: CpuSysfs, cpus: range) -> None:
        for _ in range(20):
            for cpu in cpus:
                sysfs.set_online(cpu, False)
            for cpu in cpus:
                sysfs.set_online(cpu, True)
        for cpu in cpus:
            sysfs.set_online(cpu, False)

    threads = [
        threading.Thread(target=flip, args=(tree, range(1, 5))),
        threading.Thread(target=flip, args=(other, range(5, 9))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tree.online() == (0,)
    assert parse_cpu_list((tmp_path / CPU_DIR / "offline").read_text()) == tuple(range(1, 9))

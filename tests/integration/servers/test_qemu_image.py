"""The guest image for real: built from Debian packages, cached, and booted in a real QEMU.

The image is built once per machine in the default cache directory (as
`make` builds it), so only the first run pays for the build. One VM boots,
under the accelerator `probe_accel` finds (TCG here), and proves from its
console log that /init did its work: the host's Python runs over 9p, the
virtio-serial ports have their links, and the guest really has the vCPUs
it was given (cpu1 goes offline and online again).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servergroup.common.process import ProcessIdentity, stop_process
from servergroup.servers.drivers.qemu.boot import READY_MARKER, VmLayout, qemu_argv
from servergroup.servers.drivers.qemu.image import (
    GuestImage,
    GuestImageError,
    ensure_image,
    guest_mounts,
    guest_python,
    probe_accel,
)

BUILD_TIMEOUT = 600  # a first build downloads the kernel package (~70 MB)
BOOT_TIMEOUT = 90.0  # TCG on two shared cores: boot, a Python start, two vCPU changes


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return ensure_image()


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    """A short directory for one VM's sockets and files; its QEMU is killed at teardown."""
    d = Path(tempfile.mkdtemp(prefix="sg-vm-"))
    try:
        yield d
    finally:
        pid_file = d / "qemu.pid"
        with contextlib.suppress(OSError, ValueError):
            kill_vm(int(pid_file.read_text()), pid_file)
        shutil.rmtree(d, ignore_errors=True)


def kill_vm(pid: int, pid_file: Path) -> None:
    """End the QEMU whose PID file is ours (if that PID is still our QEMU) and wait for it."""
    identity = ProcessIdentity.of(pid, argv_check=lambda argv: str(pid_file) in argv)
    if identity is not None:  # else the PID is someone else's now
        stop_process(identity, term_timeout=0.0, kill_timeout=10.0)


@pytest.mark.timeout(BUILD_TIMEOUT)
def test_image_is_built_and_the_second_call_does_not_rebuild(guest_image: GuestImage) -> None:
    assert guest_image.kernel.read_bytes()[:4] == b"\x7fELF"  # PVH boot needs the ELF vmlinux
    assert guest_image.initrd.read_bytes()[:6] == b"070701"  # newc cpio, uncompressed
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", guest_image.kernel_version)
    before = (guest_image.kernel.stat().st_mtime_ns, guest_image.initrd.stat().st_mtime_ns)
    started = time.monotonic()
    again = ensure_image()
    took = time.monotonic() - started
    assert again == guest_image
    assert (again.kernel.stat().st_mtime_ns, again.initrd.stat().st_mtime_ns) == before
    assert took < 1.0, f"a cached image took {took:.2f} s to find"
    leftovers = [p.name for p in guest_image.kernel.parent.parent.glob(".build-*")]
    assert leftovers == []


@pytest.mark.timeout(60)
def test_image_dir_that_cannot_be_written_is_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    with pytest.raises(GuestImageError) as caught:
        ensure_image(blocker / "guest")
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith(".")
    assert str(blocker / "guest") in message
    assert "SERVERGROUP_GUEST_IMAGE_DIR" in message


@pytest.mark.timeout(60)
def test_command_line_entry_point_says_where_the_image_is_or_one_sentence(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    module = "servergroup.servers.drivers.qemu.image"
    ok = subprocess.run(
        [sys.executable, "-m", module], capture_output=True, text=True, timeout=30, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert str(guest_image.kernel) in ok.stdout
    assert str(guest_image.initrd) in ok.stdout
    (tmp_path / "f").write_text("")
    bad = subprocess.run(
        [sys.executable, "-m", module, "--dir", str(tmp_path / "f" / "guest")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.timeout(120)
def test_probe_accel_answers_once_and_can_be_overridden(
    guest_image: GuestImage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SERVERGROUP_QEMU_ACCEL", raising=False)
    accel = probe_accel(guest_image, tmp_path)
    assert accel in ("kvm", "tcg")
    assert (tmp_path / "accel").is_file()
    started = time.monotonic()
    assert probe_accel(guest_image, tmp_path) == accel
    assert time.monotonic() - started < 0.5  # cached: no second boot
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert accel == "tcg"
    monkeypatch.setenv("SERVERGROUP_QEMU_ACCEL", "tcg")
    assert probe_accel(guest_image, tmp_path) == "tcg"
    monkeypatch.setenv("SERVERGROUP_QEMU_ACCEL", "kvm")
    assert probe_accel(guest_image, tmp_path) == "kvm"


VCPU_COMMAND = """\
echo "nproc: $(nproc)"
echo "online: $(cat /sys/devices/system/cpu/online)"
echo 0 > /sys/devices/system/cpu/cpu1/online
echo "after offline: $(cat /sys/devices/system/cpu/online)"
echo 1 > /sys/devices/system/cpu/cpu1/online
echo "after online: $(cat /sys/devices/system/cpu/online)"
echo "ports: $(ls /dev/virtio-ports | tr '\\n' ' ')"
echo "hostname: $(hostname)"
{python} -c 'import servergroup; print("guest python:", servergroup.__file__)'
"""


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_vm_boots_runs_host_python_and_offlines_a_vcpu(
    guest_image: GuestImage, vm_dir: Path
) -> None:
    accel = probe_accel(guest_image)
    python = guest_python()
    layout = VmLayout(
        name="sg-test-vm",
        vcpus=2,
        max_vcpus=2,
        memory_mb=256,
        accel=accel,
        kernel=guest_image.kernel,
        initrd=guest_image.initrd,
        python=python,
        mounts=guest_mounts(),
        channel_socket=vm_dir / "cgcs.messaging.instance-test.sock",
        exec_socket=vm_dir / "exec.sock",
        qmp_socket=vm_dir / "qmp.sock",
        console_log=vm_dir / "console.log",
        pid_file=vm_dir / "qemu.pid",
        command=VCPU_COMMAND.format(python=python),
    )
    started = time.monotonic()
    qemu = subprocess.run(qemu_argv(layout), capture_output=True, text=True, timeout=30)
    assert qemu.returncode == 0, qemu.stderr
    pid = int(layout.pid_file.read_text())
    for sock in (layout.channel_socket, layout.exec_socket, layout.qmp_socket):
        assert sock.is_socket(), f"QEMU made no socket {sock}"

    ready_after = None
    console = ""
    deadline = started + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        console = layout.console_log.read_text(errors="replace")
        if ready_after is None and READY_MARKER in console:
            ready_after = time.monotonic() - started
        if "command exited with status" in console:
            break
        assert Path(f"/proc/{pid}").exists(), f"QEMU died:\n{console}"
        time.sleep(0.05)
    else:
        pytest.fail(f"the guest did not finish its command in {BOOT_TIMEOUT} s:\n{console}")
    assert ready_after is not None
    print(f"\nqemu ({accel}) start to '{READY_MARKER}': {ready_after:.2f} s")

    assert "nproc: 2" in console, console
    assert "online: 0-1" in console
    assert "after offline: 0\n" in console.replace("\r", "")
    assert "after online: 0-1" in console
    assert re.search(r"ports: .*cgcs\.messaging", console)
    assert re.search(r"ports: .*org\.servergroup\.exec", console)
    assert "hostname: sg-test-vm" in console
    assert re.search(r"guest python: \S+/servergroup/__init__\.py", console), console
    assert "command exited with status 0" in console

    kill_vm(pid, layout.pid_file)
    for leftover in (layout.channel_socket, layout.exec_socket, layout.qmp_socket):
        leftover.unlink(missing_ok=True)
    assert not any(p.is_socket() for p in vm_dir.iterdir())


def qmp(sock: Path, *commands: tuple[str, dict[str, Any]], timeout: float = 10.0) -> list[Any]:
    """Run QMP `commands` (name, arguments) on `sock`; their replies, events skipped."""
    replies: list[Any] = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        f = s.makefile("rw")
        json.loads(f.readline())  # greeting
        for name, arguments in (("qmp_capabilities", {}), *commands):
            f.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
            f.flush()
            while "event" in (reply := json.loads(f.readline())):
                pass
            replies.append(reply)
    return replies[1:]


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_vm_on_a_read_only_disk_can_migrate(guest_image: GuestImage, vm_dir: Path) -> None:
    # With 9p shares mounted QEMU refuses to migrate; the same files on a
    # read-only ext4 disk (bound in place by /init) leave no blocker.
    tree = vm_dir / "tree"
    (tree / "opt" / "sgtest").mkdir(parents=True)
    (tree / "opt" / "sgtest" / "hello.txt").write_text("hello from the disk\n")
    disk = vm_dir / "disk.ext4"
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(disk), "16M"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    layout = VmLayout(
        name="sg-test-disk",
        vcpus=1,
        max_vcpus=1,
        memory_mb=128,
        accel=probe_accel(guest_image),
        kernel=guest_image.kernel,
        initrd=guest_image.initrd,
        python="",
        mounts=(),
        channel_socket=vm_dir / "ch.sock",
        exec_socket=vm_dir / "exec.sock",
        qmp_socket=vm_dir / "qmp.sock",
        console_log=vm_dir / "console.log",
        pid_file=vm_dir / "qemu.pid",
        command="cat /opt/sgtest/hello.txt; grep -c ' 9p ' /proc/mounts",
        disk=disk,
    )
    qemu = subprocess.run(qemu_argv(layout), capture_output=True, text=True, timeout=30)
    assert qemu.returncode == 0, qemu.stderr
    deadline = time.monotonic() + BOOT_TIMEOUT
    console = ""
    while "command exited with status" not in console:
        assert time.monotonic() < deadline, f"the guest did not finish its command:\n{console}"
        time.sleep(0.05)
        console = layout.console_log.read_text(errors="replace")
    assert "hello from the disk" in console, console
    assert re.search(r"^0\r?$", console, re.MULTILINE), console  # no 9p mount at all
    (blockers,) = qmp(layout.qmp_socket, ("query-migrate", {}))
    assert "blocked-reasons" not in blockers["return"], blockers
    (started,) = qmp(layout.qmp_socket, ("migrate", {"uri": "exec:cat > /dev/null"}))
    assert started == {"return": {}}, started
    deadline = time.monotonic() + 60
    while True:
        (reply,) = qmp(layout.qmp_socket, ("query-migrate", {}))
        status = reply["return"]["status"]
        if status == "completed":
            break
        assert status in ("setup", "active", "device"), reply
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)

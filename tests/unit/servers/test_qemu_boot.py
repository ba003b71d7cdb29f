"""qemu_argv and kernel_cmdline: the VM a layout describes, as libvirt would lay out its channel."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from servergroup.common.errors import UsageError
from servergroup.servers.drivers.qemu.boot import (
    BASE_CMDLINE,
    CHANNEL_PORT,
    DISK_DEVICE,
    EXEC_PORT,
    QEMU_BINARY,
    VmLayout,
    decode_command,
    encode_command,
    kernel_cmdline,
    qemu_argv,
    share_mounts,
)

D = Path("/run/sg/h0")


def layout(**changes: object) -> VmLayout:
    base = VmLayout(
        name="vm-1",
        vcpus=2,
        max_vcpus=4,
        memory_mb=256,
        accel="tcg",
        kernel=Path("/cache/guest/image/vmlinux"),
        initrd=Path("/cache/guest/image/initrd.img"),
        python="/work/main/.venv/bin/python",
        mounts=(("sg0", "/opt/py"), ("sg1", "/work/main/.venv"), ("sg2", "/work/main/src")),
        channel_socket=D / "cgcs.messaging.instance-00000001.sock",
        exec_socket=D / "vm-1.exec.sock",
        qmp_socket=D / "vm-1.qmp.sock",
        console_log=D / "vm-1.console.log",
        pid_file=D / "vm-1.pid",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def values(argv: list[str], option: str) -> list[str]:
    """Every value given to `option` in `argv`, in order."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == option]


def test_argv_starts_qemu_daemonized_without_defaults() -> None:
    argv = qemu_argv(layout())
    assert argv[0] == QEMU_BINARY
    for flag in ("-nodefaults", "-no-user-config", "-daemonize"):
        assert argv.count(flag) == 1
    assert values(argv, "-display") == ["none"]
    assert "-nographic" not in argv  # QEMU refuses it with -daemonize
    assert "-no-reboot" not in argv  # a reboot is QMP system_reset; the guest must come back
    assert values(argv, "-pidfile") == [str(D / "vm-1.pid")]
    assert values(argv, "-machine") == ["pc"]
    assert values(argv, "-accel") == ["tcg"]
    assert values(argv, "-m") == ["256"]
    assert values(argv, "-name") == ["vm-1"]


def test_argv_boots_the_image_with_the_cmdline() -> None:
    lay = layout()
    argv = qemu_argv(lay)
    assert values(argv, "-kernel") == ["/cache/guest/image/vmlinux"]
    assert values(argv, "-initrd") == ["/cache/guest/image/initrd.img"]
    assert values(argv, "-append") == [kernel_cmdline(lay)]


def test_vcpus_online_at_boot_and_room_to_hot_add() -> None:
    assert values(qemu_argv(layout(vcpus=2, max_vcpus=4)), "-smp") == ["2,maxcpus=4"]
    assert values(qemu_argv(layout(vcpus=1, max_vcpus=1)), "-smp") == ["1,maxcpus=1"]


@pytest.mark.parametrize(("vcpus", "max_vcpus"), [(0, 1), (3, 2)])
def test_impossible_vcpus_are_refused(vcpus: int, max_vcpus: int) -> None:
    with pytest.raises(UsageError, match="vcpus"):
        qemu_argv(layout(vcpus=vcpus, max_vcpus=max_vcpus))


def test_console_is_appended_to_a_file() -> None:
    argv = qemu_argv(layout())
    assert f"file,id=console,path={D}/vm-1.console.log,append=on" in values(argv, "-chardev")
    assert values(argv, "-serial") == ["chardev:console"]


def test_qmp_socket_is_a_server_that_does_not_wait() -> None:
    assert values(qemu_argv(layout()), "-qmp") == [f"unix:{D}/vm-1.qmp.sock,server=on,wait=off"]


def test_messaging_channel_is_laid_out_as_libvirt_does() -> None:
    argv = qemu_argv(layout())
    i = argv.index("-device")
    assert argv[i : i + 6] == [
        "-device",
        "virtio-serial",
        "-chardev",
        f"socket,id=ch0,path={D}/cgcs.messaging.instance-00000001.sock,server=on,wait=off",
        "-device",
        "virtserialport,chardev=ch0,id=channel0,name=cgcs.messaging",
    ]
    assert CHANNEL_PORT == "cgcs.messaging"


def test_exec_port_is_a_second_port_on_its_own_socket() -> None:
    argv = qemu_argv(layout())
    assert f"socket,id=ch1,path={D}/vm-1.exec.sock,server=on,wait=off" in values(argv, "-chardev")
    assert f"virtserialport,chardev=ch1,id=channel1,name={EXEC_PORT}" in values(argv, "-device")
    assert values(argv, "-device").count("virtio-serial") == 1  # one controller, two ports


def test_usr_and_every_share_are_read_only_9p() -> None:
    argv = qemu_argv(layout())
    assert values(argv, "-virtfs") == [
        "local,path=/usr,mount_tag=usr,security_model=none,readonly=on",
        "local,path=/opt/py,mount_tag=sg0,security_model=none,readonly=on",
        "local,path=/work/main/.venv,mount_tag=sg1,security_model=none,readonly=on",
        "local,path=/work/main/src,mount_tag=sg2,security_model=none,readonly=on",
    ]


def test_commas_in_paths_are_escaped_for_qemu() -> None:
    argv = qemu_argv(layout(console_log=Path("/tmp/a,b/console.log")))
    assert "file,id=console,path=/tmp/a,,b/console.log,append=on" in values(argv, "-chardev")


def test_incoming_only_when_set() -> None:
    assert "-incoming" not in qemu_argv(layout())
    uri = "unix:/run/sg/h1/vm-1.migrate.sock"
    assert values(qemu_argv(layout(incoming=uri)), "-incoming") == [uri]


def test_same_layout_same_argv() -> None:
    # A live migration's incoming copy must have the running copy's devices, in order.
    assert qemu_argv(layout()) == qemu_argv(layout())
    a = qemu_argv(layout())
    b = qemu_argv(layout(incoming="tcp:127.0.0.1:4444"))
    assert b[: len(a)] == a


def test_cmdline_carries_what_init_reads() -> None:
    words = kernel_cmdline(layout()).split()
    assert words[: len(BASE_CMDLINE)] == list(BASE_CMDLINE)
    assert "console=ttyS0" in words
    assert "sg.name=vm-1" in words
    assert "sg.python=/work/main/.venv/bin/python" in words
    assert "sg.mounts=sg0:/opt/py,sg1:/work/main/.venv,sg2:/work/main/src" in words
    assert not any(w.startswith("sg.cmd=") for w in words)


def test_cmdline_without_python_or_mounts() -> None:
    words = kernel_cmdline(layout(python="", mounts=())).split()
    assert not any(w.startswith(("sg.python=", "sg.mounts=")) for w in words)


@pytest.mark.parametrize(
    "command",
    [
        "nproc; cat /sys/devices/system/cpu/online",
        "echo 'quoted words' \"and more\" | tr a-z A-Z\nexit 3\n",
        "printf 'caf\\xc3\\xa9 ünïcode ✓'",
        "",
    ],
)
def test_command_travels_base64_and_round_trips(command: str) -> None:
    words = kernel_cmdline(layout(command=command)).split()
    (encoded,) = [w.removeprefix("sg.cmd=") for w in words if w.startswith("sg.cmd=")]
    assert encoded == encode_command(command)
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert decode_command(encoded) == command


def test_garbage_command_encoding_is_one_error() -> None:
    with pytest.raises(UsageError, match="base64"):
        decode_command("not base64!")


def test_a_command_too_long_for_the_kernel_is_refused() -> None:
    with pytest.raises(UsageError, match="shorter command"):
        kernel_cmdline(layout(command="x" * 2000))


@pytest.mark.parametrize("name", ["vm 1", "", "vm'1"])
def test_words_that_would_break_the_cmdline_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        kernel_cmdline(layout(name=name))


def test_share_with_a_comma_is_refused() -> None:
    with pytest.raises(UsageError, match="','"):
        kernel_cmdline(layout(mounts=(("sg0", "/a,b"),)))


def test_share_mounts_drop_what_usr_or_another_share_holds() -> None:
    assert share_mounts(
        [
            "/work/main/.venv",
            "/work/main/src",
            "/usr/local/lib/python3.11",  # inside /usr: shared already
            "/work/main/.venv/lib/python3.11/site-packages",  # inside the venv
            "/work/main/src/",  # the same directory again
            "/usrx/lib",  # not inside /usr
        ]
    ) == (("sg0", "/usrx/lib"), ("sg1", "/work/main/.venv"), ("sg2", "/work/main/src"))


def test_share_mounts_are_deterministic_and_absolute() -> None:
    expected = (("sg0", "/a"), ("sg1", "/b"))
    assert share_mounts(["/b", "/a"]) == expected
    assert share_mounts(["/a", "/b", "/a"]) == expected
    assert share_mounts(["/a", "/a/b", "/"]) == (("sg0", "/"),)
    with pytest.raises(UsageError, match="absolute"):
        share_mounts(["relative/path"])


def test_a_disk_replaces_every_9p_share() -> None:
    lay = layout(mounts=(), disk=Path("/cache/guest/rootfs-1.ext4"))
    argv = qemu_argv(lay)
    assert "-virtfs" not in argv  # a mounted 9p share blocks live migration
    assert values(argv, "-drive") == [
        "file=/cache/guest/rootfs-1.ext4,format=raw,if=none,id=disk0,readonly=on"
    ]
    assert "virtio-blk-pci,drive=disk0" in values(argv, "-device")
    words = kernel_cmdline(lay).split()
    assert f"sg.disk={DISK_DEVICE}" in words
    assert not any(w.startswith("sg.mounts=") for w in words)


def test_disk_and_shares_together_are_refused() -> None:
    with pytest.raises(UsageError, match="not both"):
        qemu_argv(layout(disk=Path("/cache/guest/rootfs-1.ext4")))

"""How a qemu server boots: its QEMU command line and its kernel command line, as data.

Theory of operation. A qemu server is one QEMU process per copy of the VM.
Everything that process needs is described by a `VmLayout` (name, vCPUs,
memory, accelerator, guest image, the host paths it shares with the guest,
and the sockets and files it creates), and `qemu_argv` turns that layout into
the argument vector, deterministically: the same layout always gives the same
argv, which is what a live migration needs (the incoming copy must have the
same devices as the running one, in the same order).

This module is pure: no I/O, no subprocess, no clock. The driver creates the
directories, starts the program and talks QMP; `image` builds the kernel and
initramfs the layout names.

The VM it describes:

- machine `pc` with the PVH entry point of an uncompressed `vmlinux` and an
  initramfs (no firmware disk, no bootloader); no default devices
  (`-nodefaults`), no display, daemonized with a PID file;
- the serial console appended to a file (a reboot or a restart keeps the
  earlier output);
- a QMP socket (server, not waiting for a client);
- one virtio-serial controller with two ports: `cgcs.messaging`, exactly as
  libvirt lays out a guest channel (socket chardev `ch0`, server, nowait),
  which the host's relay connects to; and `org.servergroup.exec`, the exec
  agent's port;
- the host's `/usr` and the extra shares read-only over 9p (`-virtfs`), so
  the guest runs the host's own Python and servergroup; or, for a VM that
  must be able to migrate live (QEMU will not migrate a VM with a 9p share
  mounted), a read-only ext4 disk holding those files instead (`disk`);
- `-smp vcpus,maxcpus=max_vcpus`: the flavor's vCPUs online at boot, room to
  hot-add up to `max_vcpus`.

The guest's `/init` (see `image.INIT_SCRIPT`) reads the `sg.*` keys of the
kernel command line that `kernel_cmdline` writes: `sg.name` (host name),
`sg.python` (the interpreter that runs the agents), `sg.mounts` (9p tag and
mount point of each extra share), `sg.disk` (the block device of the disk,
instead of 9p) and `sg.cmd` (a user command, base64).
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from servergroup.common.errors import UsageError

#: The QEMU program that runs a server.
QEMU_BINARY = "qemu-system-x86_64"

#: Machine type: i440FX boots faster than q35 and, with the PVH entry point,
#: needs no firmware disk; its PCI bus carries the virtio devices.
MACHINE = "pc"

#: The messaging port's name in the guest (`/dev/virtio-ports/cgcs.messaging`), as libvirt names it.
CHANNEL_PORT = "cgcs.messaging"

#: The exec agent's port name in the guest (`/dev/virtio-ports/org.servergroup.exec`).
EXEC_PORT = "org.servergroup.exec"

#: QEMU device ids of the two ports, as libvirt numbers its channels; QMP's
#: VSERPORT_CHANGE event names the port the guest opened or closed by this id.
CHANNEL_PORT_ID = "channel0"
EXEC_PORT_ID = "channel1"

#: The 9p mount tag of the host's `/usr`, shared with every guest.
USR_TAG = "usr"

#: The guest's name for the disk of `VmLayout.disk` (the only virtio block device).
DISK_DEVICE = "vda"

#: The line the guest's `/init` prints on the console once the guest is up.
READY_MARKER = "servergroup-init: ready"

#: Kernel command line options every guest gets: console on the first serial
#: port, little noise, reboot at once on a panic, and no legacy probing
#: (keyboard controller, extra UARTs) that only costs boot time. Then what
#: costs a micro-VM's boot for nothing it needs, about 0.8 s under TCG here:
#: patching in CPU-bug mitigations (the guest runs only its agents and the
#: operator's commands), the crypto self-tests, relocating the kernel to a
#: random address, the audit subsystem, the IO-APIC timer check, zeroing
#: kernel memory on allocation, and routing PCI interrupts through ACPI
#: (its interpreter takes 0.1 s a device; the firmware's routing table
#: serves; CPU hotplug does not depend on it).
BASE_CMDLINE = (
    "console=ttyS0",
    "quiet",
    "panic=-1",
    "8250.nr_uarts=1",
    "i8042.noaux",
    "i8042.nokbd",
    "i8042.nopnp",
    "mitigations=off",
    "cryptomgr.notests",
    "nokaslr",
    "audit=0",
    "no_timer_check",
    "init_on_alloc=0",
    "pci=noacpi",
)

#: x86 COMMAND_LINE_SIZE, including the terminating NUL.
_CMDLINE_MAX = 2048

Accel = Literal["kvm", "tcg"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VmLayout:
    """Everything one QEMU process of a server needs; `qemu_argv` turns it into an argv.

    Paths are host paths, except `python` and the mount points of `mounts`,
    which are the same on the host and in the guest (the guest mounts each
    share at the path it has on the host). An empty `python` boots the guest
    without its agents (the accelerator probe does). `command`, if any, runs
    in the guest once it is up (`sh -c`, output on the console); `incoming`
    is a migration URI the copy waits at (`-incoming`).

    `disk`, if set, is a read-only ext4 disk image holding the guest's files
    at their host paths (`/usr/...`, the interpreter, the venv, the sources);
    it then replaces every 9p share, `/usr` included, because QEMU refuses
    to migrate a VM that has a 9p share mounted. Two QEMUs may open the same
    disk at once, which is all a live migration on one machine needs.
    """

    name: str
    vcpus: int
    max_vcpus: int
    memory_mb: int
    accel: Accel
    kernel: Path
    initrd: Path
    python: str
    mounts: tuple[tuple[str, str], ...]
    channel_socket: Path
    exec_socket: Path
    qmp_socket: Path
    console_log: Path
    pid_file: Path
    command: str | None = None
    incoming: str | None = None
    disk: Path | None = None


def share_mounts(paths: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The 9p shares (tag, path) a guest needs to see `paths`, beyond the host's `/usr`.

    Paths are normalized; one inside `/usr` or inside another listed path
    needs no share of its own; duplicates go. Tags are `sg0`, `sg1`, ... in
    the order of the remaining paths, sorted, so the same set of paths always
    gives the same shares.
    """
    normal: set[str] = set()
    for path in paths:
        if not posixpath.isabs(path):
            raise UsageError(f"a guest share must be an absolute path, not {path!r}.")
        normal.add(posixpath.normpath(path))
    kept: list[str] = []
    for path in sorted(normal, key=lambda p: (p.count("/"), p)):
        if any(_inside(path, outer) for outer in ["/usr", *kept]):
            continue
        kept.append(path)
    return tuple((f"sg{i}", path) for i, path in enumerate(sorted(kept)))


def _inside(path: str, outer: str) -> bool:
    return path == outer or path.startswith(outer.rstrip("/") + "/")


def encode_command(command: str) -> str:
    """The user command as it travels on the kernel command line (`sg.cmd=`): base64."""
    return base64.b64encode(command.encode()).decode("ascii")


def decode_command(encoded: str) -> str:
    """The inverse of `encode_command`."""
    try:
        return base64.b64decode(encoded.encode("ascii"), validate=True).decode()
    except (binascii.Error, UnicodeError) as e:
        raise UsageError(f"sg.cmd is not a base64-encoded UTF-8 command: {e}.") from e


def kernel_cmdline(layout: VmLayout) -> str:
    """The guest kernel's command line: `BASE_CMDLINE` and the `sg.*` keys `/init` reads."""
    _check_word("server name", layout.name)
    words = [*BASE_CMDLINE, f"sg.name={layout.name}"]
    if layout.python:
        _check_word("guest Python path", layout.python)
        words.append(f"sg.python={layout.python}")
    if layout.disk is not None:
        if layout.mounts:
            raise UsageError("a guest gets its files from a disk or from 9p shares, not both.")
        words.append(f"sg.disk={DISK_DEVICE}")
    if layout.mounts:
        for tag, path in layout.mounts:
            _check_word("9p mount tag", tag)
            _check_word("guest share path", path)
            if ":" in tag or "," in tag or "," in path:
                raise UsageError(
                    f"guest share {tag}:{path} may not contain ',' (or ':' in the tag)."
                )
        words.append("sg.mounts=" + ",".join(f"{tag}:{path}" for tag, path in layout.mounts))
    if layout.command is not None:
        words.append(f"sg.cmd={encode_command(layout.command)}")
    line = " ".join(words)
    if len(line) >= _CMDLINE_MAX:
        raise UsageError(
            f"the guest's kernel command line would be {len(line)} bytes, over the "
            f"kernel's limit of {_CMDLINE_MAX - 1}; give a shorter command."
        )
    return line


def _check_word(what: str, value: str) -> None:
    if not value or any(c.isspace() or c in "\"'" for c in value):
        raise UsageError(f"the {what} {value!r} must be non-empty, without spaces or quotes.")


def qemu_argv(layout: VmLayout) -> list[str]:
    """The full argument vector (program first) that starts `layout`'s QEMU, daemonized."""
    if not 1 <= layout.vcpus <= layout.max_vcpus:
        raise UsageError(
            f"a server needs 1 <= vcpus <= max_vcpus, not vcpus={layout.vcpus} "
            f"and max_vcpus={layout.max_vcpus}."
        )
    if layout.memory_mb < 64:
        raise UsageError(f"a server needs at least 64 MB of memory, not {layout.memory_mb}.")
    argv = [
        QEMU_BINARY,
        "-name",
        _opt(layout.name),
        "-machine",
        MACHINE,
        "-accel",
        layout.accel,
        "-m",
        str(layout.memory_mb),
        "-smp",
        f"{layout.vcpus},maxcpus={layout.max_vcpus}",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-daemonize",
        "-pidfile",
        str(layout.pid_file),
        "-kernel",
        str(layout.kernel),
        "-initrd",
        str(layout.initrd),
        "-append",
        kernel_cmdline(layout),
        "-chardev",
        f"file,id=console,path={_opt(str(layout.console_log))},append=on",
        "-serial",
        "chardev:console",
        "-qmp",
        f"unix:{_opt(str(layout.qmp_socket))},server=on,wait=off",
        "-device",
        "virtio-serial",
        "-chardev",
        f"socket,id=ch0,path={_opt(str(layout.channel_socket))},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=ch0,id={CHANNEL_PORT_ID},name={CHANNEL_PORT}",
        "-chardev",
        f"socket,id=ch1,path={_opt(str(layout.exec_socket))},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=ch1,id={EXEC_PORT_ID},name={EXEC_PORT}",
    ]
    if layout.disk is not None:
        argv += [
            "-drive",
            f"file={_opt(str(layout.disk))},format=raw,if=none,id=disk0,readonly=on",
            "-device",
            "virtio-blk-pci,drive=disk0",
        ]
    else:
        argv += _virtfs(USR_TAG, "/usr")
        for tag, path in layout.mounts:
            argv += _virtfs(tag, path)
    if layout.incoming is not None:
        argv += ["-incoming", layout.incoming]
    return argv


def _virtfs(tag: str, path: str) -> list[str]:
    return [
        "-virtfs",
        f"local,path={_opt(path)},mount_tag={tag},security_model=none,readonly=on",
    ]


def _opt(value: str) -> str:
    """`value` as one QEMU option value: a comma is written twice (QEMU's own escape)."""
    return value.replace(",", ",,")

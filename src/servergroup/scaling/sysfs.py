"""A guest's CPUs as Linux shows them in sysfs: read, and taken offline or online.

Theory of operation. Linux lists a machine's CPUs under
`<root>/sys/devices/system/cpu`: the summary files `online`, `offline`,
`present` and `possible` hold CPU lists ("0-2,5", see `cpus`), and each CPU
that can be hot-unplugged has `cpuN/online` ("1" or "0"; CPU 0 usually has
none). Writing "0" or "1" to `cpuN/online` takes the CPU offline or online
and the kernel updates the summary files. `CpuSysfs` is that interface;
every path is under a *root* (the `--sysfs-root` of the scale agent, `/` in
a real guest), so a scale agent never knows whether it talks to a kernel.

Two implementations, one contract (tests/unit/scaling/test_sysfs_contract.py):

- `KernelCpuSysfs`: the kernel's own files (a qemu server's sysfs, or this
  machine's, read-only, in tests; written only in a VM or in the real-CPU
  test gated by SERVERGROUP_REAL_CPU_TESTS=1).
- `LabCpuSysfs`: a directory tree with the same layout, made by
  `make_lab_tree` for a lab server sized to its flavor's vCPUs. Lab servers
  share the machine's CPUs, so their agent must never write the real ones:
  it writes its own tree, and since no kernel is there, `set_online` updates
  the summary files itself, as the kernel would (each written whole: a
  reader sees the old list or the new one). A tree is recognised by its
  marker file `LAB_MARKER`, which no kernel's sysfs can hold;
  `open_cpu_sysfs(root)` picks the implementation by it.

Invariants, both ways: `online()` and `offline()` partition `present()`;
CPU 0 is never taken offline here (the kernel may refuse it, and spec
section 5 forbids it); taking an offline CPU offline, or an online one
online, succeeds and changes nothing. Errors are `CpuSysfsError`, one
sentence.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

from servergroup.common.errors import RemoteError
from servergroup.scaling.cpus import CpuListError, format_cpu_list, parse_cpu_list

#: Where the CPUs are, below a sysfs root.
CPU_DIR: Final = Path("sys/devices/system/cpu")
#: The file that marks a lab tree (a kernel's sysfs cannot hold it).
LAB_MARKER: Final = ".servergroup-lab-tree"
#: The summary files, each a CPU list.
SUMMARIES: Final = ("online", "offline", "present", "possible")


class CpuSysfsError(RemoteError):
    """A CPU could not be read, or taken offline or online (one sentence saying why)."""


class CpuSysfs(Protocol):
    """A machine's CPUs as sysfs shows them (see the module docstring)."""

    @property
    def root(self) -> Path:
        """The sysfs root (`/` for the running kernel's own)."""
        ...

    def online(self) -> tuple[int, ...]:
        """The online CPUs, ascending (the `online` file)."""
        ...

    def offline(self) -> tuple[int, ...]:
        """The present CPUs that are offline, ascending."""
        ...

    def present(self) -> tuple[int, ...]:
        """The CPUs present, ascending."""
        ...

    def possible(self) -> tuple[int, ...]:
        """The CPUs this machine could ever have, ascending."""
        ...

    def can_offline(self, cpu: int) -> bool:
        """Whether `cpu` has an `online` switch (CPU 0 usually has none)."""
        ...

    def set_online(self, cpu: int, online: bool) -> None:
        """Take `cpu` online or offline (already so: nothing changes); CpuSysfsError if not."""
        ...


class _CpuTree:
    """Reading `<root>/sys/devices/system/cpu`, common to both implementations."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self.cpu_dir = self._root / CPU_DIR

    @property
    def root(self) -> Path:
        return self._root

    def _read_list(self, name: str) -> tuple[int, ...]:
        path = self.cpu_dir / name
        try:
            text = path.read_text()
        except OSError as exc:
            raise CpuSysfsError(f"cannot read {path}: {exc.strerror}.") from None
        try:
            return parse_cpu_list(text)
        except CpuListError as exc:
            raise CpuSysfsError(f"{path} holds no CPU list: {exc}") from None

    def online(self) -> tuple[int, ...]:
        return self._read_list("online")

    def offline(self) -> tuple[int, ...]:
        return self._read_list("offline")

    def present(self) -> tuple[int, ...]:
        return self._read_list("present")

    def possible(self) -> tuple[int, ...]:
        return self._read_list("possible")

    def switch(self, cpu: int) -> Path:
        return self.cpu_dir / f"cpu{cpu}" / "online"

    def can_offline(self, cpu: int) -> bool:
        return cpu != 0 and self.switch(cpu).is_file()

    def _check_switch(self, cpu: int, online: bool) -> Path:
        if cpu == 0 and not online:
            raise CpuSysfsError("CPU 0 is never taken offline.")
        path = self.switch(cpu)
        if not path.is_file():
            if cpu not in self.present():
                raise CpuSysfsError(f"there is no CPU {cpu} (present: {self._present_text()}).")
            if online:
                return path  # no switch: always online (CPU 0)
            raise CpuSysfsError(f"CPU {cpu} cannot be taken offline: {path} does not exist.")
        return path

    def _present_text(self) -> str:
        try:
            return format_cpu_list(self.present()) or "none"
        except CpuSysfsError:
            return "unknown"


class KernelCpuSysfs(_CpuTree):
    """The kernel's CPUs: writes go to the kernel, which keeps the summary files."""

    def set_online(self, cpu: int, online: bool) -> None:
        path = self._check_switch(cpu, online)
        if not path.exists():
            return
        try:
            if path.read_text().strip() == ("1" if online else "0"):
                return
            with open(path, "w") as out:
                out.write("1" if online else "0")
        except OSError as exc:
            what = "online" if online else "offline"
            why = exc.strerror or str(exc)
            if exc.errno == errno.EBUSY:
                why = "the kernel says it is busy"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                why = "permission denied (it takes root)"
            raise CpuSysfsError(f"cannot take CPU {cpu} {what}: {why}.") from None


class LabCpuSysfs(_CpuTree):
    """A lab server's own tree: writes update the summary files, as the kernel would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        if not (self.cpu_dir / LAB_MARKER).is_file():
            raise CpuSysfsError(f"{self.cpu_dir} is not a lab CPU tree (no {LAB_MARKER}).")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (several processes may share a tree)."""
        fd = os.open(self.cpu_dir / LAB_MARKER, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def set_online(self, cpu: int, online: bool) -> None:
        path = self._check_switch(cpu, online)
        if not path.exists():
            return
        try:
            with self._locked():
                _write_whole(path, "1\n" if online else "0\n")
                self._update_summaries()
        except OSError as exc:
            what = "online" if online else "offline"
            raise CpuSysfsError(f"cannot take CPU {cpu} {what}: {exc.strerror}.") from None

    def _update_summaries(self) -> None:
        present = self.present()
        online = [
            cpu
            for cpu in present
            if not self.switch(cpu).exists() or self.switch(cpu).read_text().strip() == "1"
        ]
        offline = sorted(set(present) - set(online))
        _write_whole(self.cpu_dir / "online", format_cpu_list(online) + "\n")
        _write_whole(self.cpu_dir / "offline", format_cpu_list(offline) + "\n")


def _write_whole(path: Path, text: str) -> None:
    """Replace `path` by `text` at once: a reader sees the old content or the new."""
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(text)
    part.replace(path)


def make_lab_tree(root: Path, vcpus: int) -> LabCpuSysfs:
    """A lab CPU tree under `root` with CPUs 0..vcpus-1, all online (as a boot leaves them).

    An existing tree is made afresh (a lab server's boot); anything else there
    is refused, so that a kernel's sysfs is never written by mistake.
    """
    if vcpus < 1:
        raise CpuSysfsError(f"a CPU tree needs at least 1 CPU, not {vcpus}.")
    cpu_dir = Path(root) / CPU_DIR
    if cpu_dir.exists() and not (cpu_dir / LAB_MARKER).is_file():
        raise CpuSysfsError(f"{cpu_dir} exists and is not a lab CPU tree; not touching it.")
    try:
        cpu_dir.mkdir(parents=True, exist_ok=True)
        (cpu_dir / LAB_MARKER).touch()
        every = format_cpu_list(range(vcpus)) + "\n"
        for cpu in range(1, vcpus):
            (cpu_dir / f"cpu{cpu}").mkdir(exist_ok=True)
            _write_whole(cpu_dir / f"cpu{cpu}" / "online", "1\n")
        (cpu_dir / "cpu0").mkdir(exist_ok=True)  # no switch, as on most kernels
        for name, text in (
            ("present", every),
            ("possible", every),
            ("online", every),
            ("offline", "\n"),
        ):
            _write_whole(cpu_dir / name, text)
        # CPUs of an earlier, larger flavor go (a resize).
        for entry in cpu_dir.iterdir():
            number = entry.name[3:]
            if entry.name.startswith("cpu") and number.isdigit() and int(number) >= vcpus:
                with contextlib.suppress(OSError):
                    (entry / "online").unlink()
                with contextlib.suppress(OSError):
                    entry.rmdir()
    except OSError as exc:
        raise CpuSysfsError(f"cannot make the lab CPU tree {cpu_dir}: {exc.strerror}.") from None
    return LabCpuSysfs(root)


def is_lab_tree(root: Path) -> bool:
    return (Path(root) / CPU_DIR / LAB_MARKER).is_file()


def open_cpu_sysfs(root: Path) -> CpuSysfs:
    """The CPUs under sysfs root `root`: a lab tree if it is one, else the kernel's."""
    if is_lab_tree(root):
        return LabCpuSysfs(root)
    return KernelCpuSysfs(root)


__all__ = [
    "CPU_DIR",
    "LAB_MARKER",
    "CpuSysfs",
    "CpuSysfsError",
    "KernelCpuSysfs",
    "LabCpuSysfs",
    "is_lab_tree",
    "make_lab_tree",
    "open_cpu_sysfs",
]

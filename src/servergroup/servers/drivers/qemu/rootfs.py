"""The guest's files on a read-only disk: the host's own Python, servergroup, and `ip`.

Theory of operation. A qemu guest runs the host's exact interpreter and
code, at the same paths, so that `sys.executable` and every path the host
knows work inside the VM unchanged. 9p would share them directly, but QEMU
refuses to migrate a VM with a mounted 9p share, so the guest gets them on a
small read-only ext4 disk instead (`mkfs.ext4 -d`, no mounting, no root
tricks), which two QEMUs on one machine can open at once: a live migration
needs nothing more.

What goes on it: the interpreter (every link of its symlink chain), its
standard library, the virtual environment (`sys.prefix`), the directory
holding the `servergroup` package (an editable install's `src`), a few tools
a user expects (`ip`), and every shared library those load, found with
`ldd`. Paths are the host's; a library reached through `/lib` is stored
under `/usr/lib` (Debian is merged-/usr, and the guest's `/lib` is a link).

The disk is named by a fingerprint of everything on it (paths, sizes,
modification times; bytecode aside, which is compiled afresh for each
disk), so a change to the code gives a new disk at the next boot, while
running VMs keep theirs; older disks beyond the newest few are
removed. Building is atomic (a temporary name, then a rename) and locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import servergroup
from servergroup.common.errors import LocalError

#: Tools a user of `server exec` expects beside busybox's applets.
TOOLS = ("ip",)
#: Parts of the standard library no guest needs (tests, GUIs, installers, the
#: interpreter's own site-packages: the virtual environment has its own).
STDLIB_SKIP = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "site-packages",
    "dist-packages",
)
#: How many disks to keep (running VMs may use older ones).
KEEP = 3
ROOTFS_PREFIX = "rootfs-"
TOOL_TIMEOUT = 300.0


class RootfsError(LocalError):
    """The guest's disk cannot be built; the message says why in one sentence."""


def guest_roots() -> list[Path]:
    """The trees and files the guest needs, as host paths (see the module docstring)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    package_parent = Path(servergroup.__file__).resolve().parent.parent
    roots = [Path(sys.executable), stdlib, Path(sys.prefix), package_parent]
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is not None:
            roots.append(Path(found))
    return roots


def _skip(path: Path, stdlib: Path) -> bool:
    if path.parent != stdlib:
        return False
    return path.name in STDLIB_SKIP or path.name.startswith("config-")  # static libpython


def _walk(root: Path, stdlib: Path) -> Iterator[Path]:
    """Every file, link and directory under `root` (`root` too), skipping `STDLIB_SKIP`."""
    yield root
    if root.is_symlink() or not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if _skip(entry, stdlib):
            continue
        yield from _walk(entry, stdlib)


def _chain(path: Path) -> Iterator[Path]:
    """`path` and every link it goes through to the file it names (absolute, unresolved)."""
    seen: set[Path] = set()
    current = Path(os.path.abspath(path))
    while current not in seen:
        seen.add(current)
        yield current
        if not current.is_symlink():
            return
        current = Path(os.path.abspath(current.parent / os.readlink(current)))


#: Top-level links of a merged-/usr system (the guest's /init makes the same ones).
_MERGED = ("/lib/", "/lib64/", "/bin/", "/sbin/")


def _merged(path: Path) -> Path:
    """The path under /usr of a path reached through a merged-/usr link (/lib -> usr/lib)."""
    text = str(path)
    if text.startswith(_MERGED):
        return Path("/usr") / text[1:]
    return path


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _libraries(elves: Iterable[Path]) -> set[Path]:
    """The shared libraries (and the loader) the ELF files `elves` load, by `ldd`."""
    found: set[Path] = set()
    batch = sorted({str(p) for p in elves})
    for start in range(0, len(batch), 200):
        done = subprocess.run(
            ["ldd", *batch[start : start + 200]],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        for line in done.stdout.splitlines():
            line = line.strip()
            if "=>" in line:
                target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            else:
                target = line.split(" (", 1)[0].strip()
            if target.startswith("/"):
                found.add(Path(target))
    return found


def collect() -> dict[Path, Path | str]:
    """What the disk holds: guest path -> host file to copy, or link target (a str)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    entries: dict[Path, Path | str] = {}
    elves: list[Path] = []

    def add(path: Path) -> None:
        for link in _chain(path):
            guest = _merged(link)
            if link.is_symlink():
                entries.setdefault(guest, os.readlink(link))
            elif link.is_file():
                entries.setdefault(guest, link)
                mode = link.stat().st_mode
                if (link.suffix == ".so" or ".so." in link.name or mode & stat.S_IXUSR) and (
                    _is_elf(link)
                ):
                    elves.append(link)
            elif link.is_dir():
                entries.setdefault(guest, link)

    for root in guest_roots():
        if not root.exists():
            continue
        for path in _walk(Path(os.path.abspath(root)), stdlib):
            add(path)
    for library in _libraries(elves):
        add(library)
    return entries


def fingerprint() -> str:
    """A digest of every file under `guest_roots()`: path, size, time, mode (stat only)."""
    stdlib = str(sysconfig.get_paths()["stdlib"])
    digest = hashlib.sha256()
    for root in guest_roots():
        top = os.path.abspath(root)
        digest.update(f"R{top}\n".encode())
        try:
            st = os.lstat(top)
        except OSError:
            continue
        digest.update(f"{st.st_size}:{st.st_mtime_ns}:{st.st_mode:o}\n".encode())
        if not stat.S_ISDIR(st.st_mode):
            continue
        for directory, dirs, files in os.walk(top):
            if directory == stdlib:
                dirs[:] = [d for d in dirs if d not in STDLIB_SKIP and not d.startswith("config-")]
            # Bytecode comes and goes as the host imports things; it is made anew
            # for the disk at each build (`_compile`), so it does not count here.
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(directory, name))
                    digest.update(f"{directory}/{name}\0{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_rootfs(image_dir: Path) -> Path:
    """The disk with the guest's files for the code as it is now, built when missing."""
    target = image_dir / f"{ROOTFS_PREFIX}{fingerprint()}.ext4"
    if target.is_file():
        return target
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
        with _locked(image_dir / ".rootfs.lock"):
            if not target.is_file():
                _compile()
                _build(collect(), target)
                _prune(image_dir, keep=target)
    except OSError as exc:
        raise RootfsError(
            f"cannot build the guest's disk in {image_dir}: {exc.strerror or exc}"
        ) from None
    return target


def _compile() -> None:
    """Byte-compile servergroup's sources: the guest cannot write bytecode on its
    read-only disk, and compiling at every start is slow in an emulated VM."""
    source = Path(servergroup.__file__).resolve().parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", str(source)],
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )


def _build(entries: dict[Path, Path | str], target: Path) -> None:
    if shutil.which("mkfs.ext4") is None:
        raise RootfsError("mkfs.ext4 is not installed (Debian package e2fsprogs)")
    with tempfile.TemporaryDirectory(prefix=".rootfs-", dir=target.parent) as scratch:
        tree = Path(scratch) / "tree"
        tree.mkdir()
        total = 0
        for guest, source in sorted(entries.items()):
            dest = tree / guest.relative_to("/")
            if isinstance(source, str):
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.is_symlink() and not dest.exists():
                    os.symlink(source, dest)
            elif source.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    shutil.copy2(source, dest)
                    total += source.stat().st_size
        size_mb = total * 13 // 10 // (1 << 20) + 64
        partial = Path(scratch) / "disk.ext4"
        done = subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "sgroot",
                "-O",
                "^has_journal",
                "-E",
                "root_owner=0:0",
                "-d",
                str(tree),
                str(partial),
                f"{size_mb}M",
            ],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RootfsError(f"mkfs.ext4 could not build the guest's disk: {reason}")
        os.replace(partial, target)


def _prune(image_dir: Path, *, keep: Path) -> None:
    disks = sorted(
        image_dir.glob(f"{ROOTFS_PREFIX}*.ext4"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in [d for d in disks if d != keep][KEEP - 1 :]:
        with contextlib.suppress(OSError):
            old.unlink()


__all__ = ["RootfsError", "collect", "ensure_rootfs", "fingerprint", "guest_roots"]

"""The systemd units shipped in the package, and installing them: `servergroup host install-units`.

Theory of operation
-------------------
The units live in the package (`servergroup/data/systemd/`, package data of
the wheel), so an installed `servergroup` always has the units of its own
version. A host runs `servergroup-host.service` (the host daemon; systemd
supervises it and `servergroup host cleanup` runs after it dies) and, when it
uses the managed local etcd, `servergroup-etcd.service`; a guest runs
`guest-agent.service` (the original's unit name) and
`servergroup-scale-agent.service`.

`install_units` writes a role's units into a directory (by default
`/etc/systemd/system`, the administrator's), with their `Exec...=servergroup`
lines naming the `servergroup` of this installation by its full path: in a
virtual environment or under `~/.local` it is not on systemd's fixed search
path. It writes only what changed (atomically) and says which files it wrote;
enabling and starting stays the administrator's `systemctl` step.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from servergroup.common.errors import PermissionNeeded, UsageError

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")


class Role(enum.Enum):
    """Which machine the units are for."""

    HOST = "host"
    GUEST = "guest"


UNITS: dict[Role, tuple[str, ...]] = {
    Role.HOST: ("servergroup-host.service", "servergroup-etcd.service"),
    Role.GUEST: ("guest-agent.service", "servergroup-scale-agent.service"),
}

_EXEC = re.compile(r"^(Exec(?:Start|StartPre|StartPost|StopPost)=)servergroup(?=\s)", re.M)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstalledUnit:
    path: Path
    changed: bool


def unit_names() -> list[str]:
    """Every unit the package ships."""
    folder = resources.files("servergroup") / "data" / "systemd"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".service"))


def unit_text(name: str, executable: str | None = None) -> str:
    """The unit file `name` as shipped, its `servergroup` commands run as `executable`."""
    if name not in unit_names():
        raise UsageError(f"no unit {name!r} is shipped; known: {', '.join(unit_names())}.")
    text = (resources.files("servergroup") / "data" / "systemd" / name).read_text()
    if executable is None:
        return text
    return _EXEC.sub(lambda m: m.group(1) + executable, text)


def this_servergroup() -> str:
    """The command that runs this installation's `servergroup`, by its full path."""
    beside = Path(sys.executable).parent / "servergroup"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("servergroup")
    if found is not None:
        return str(Path(found).resolve())
    return f"{sys.executable} -m servergroup"


def install_units(
    role: Role, directory: Path = DEFAULT_UNIT_DIR, executable: str | None = None
) -> list[InstalledUnit]:
    """Write `role`'s units into `directory`; which were written or already the same."""
    command = executable or this_servergroup()
    done = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in UNITS[role]:
            path = directory / name
            text = unit_text(name, command)
            try:
                same = path.read_text() == text
            except FileNotFoundError:
                same = False
            if not same:
                tmp = path.with_name(f".{name}.tmp")
                tmp.write_text(text)
                tmp.chmod(0o644)
                tmp.replace(path)
            done.append(InstalledUnit(path=path, changed=not same))
    except PermissionError:
        raise PermissionNeeded(
            f"writing systemd units into {directory} needs root; run it as root."
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot write units into {directory}: {exc.strerror or exc}.") from None
    return done


__all__ = [
    "DEFAULT_UNIT_DIR",
    "UNITS",
    "InstalledUnit",
    "Role",
    "install_units",
    "this_servergroup",
    "unit_names",
    "unit_text",
]

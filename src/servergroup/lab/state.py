"""What the lab keeps outside the kernel: one JSON record per lab, a machine-wide lock,
and the identity of the process a lab belongs to.

The record (`<state_dir>/lab/<name>.json`) is written before a lab is built
(so a process killed half-way leaves a note of what it was making) and again
once it is complete; `down` removes it last. It lists the lab's kernel
objects, its subnet and its owner. The kernel objects can also be found
without it (they are named after the lab and the bridge carries a marker),
so a lost or corrupt record never leaves anything behind.

Every change to any lab on this machine happens under one `flock` lock: labs
share the root namespace's address space, so choosing a free subnet and
taking it must be one step.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from servergroup.common.errors import UsageError
from servergroup.common.process import ProcessIdentity, alive
from servergroup.lab.errors import LabError
from servergroup.lab.plan import LabPlan, Owner

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
LOCK_NAME = "servergroup-lab.lock"


@dataclass(frozen=True, slots=True, kw_only=True)
class LabRecord:
    """What a lab's state file says."""

    name: str
    network: IPv4Network
    owner: Owner | None
    bridge: str
    namespaces: tuple[str, ...]
    links: tuple[str, ...]
    complete: bool
    updated_at: float  # wall clock, for people reading the file


def record_dir(state_dir: Path) -> Path:
    return state_dir / "lab"


def record_path(state_dir: Path, name: str) -> Path:
    return record_dir(state_dir) / f"{name}.json"


def record_of(plan: LabPlan, owner: Owner | None, *, complete: bool, now: float) -> LabRecord:
    return LabRecord(
        name=plan.name,
        network=plan.network,
        owner=owner,
        bridge=plan.bridge.ifname,
        namespaces=tuple(host.netns for host in plan.hosts),
        links=tuple(host.root_ifname for host in plan.hosts),
        complete=complete,
        updated_at=now,
    )


def encode_record(record: LabRecord) -> str:
    owner = record.owner
    return json.dumps(
        {
            "format": RECORD_FORMAT,
            "name": record.name,
            "network": str(record.network),
            "owner": {"pid": owner.pid, "start_time": owner.start_time} if owner else None,
            "bridge": record.bridge,
            "namespaces": list(record.namespaces),
            "links": list(record.links),
            "complete": record.complete,
            "updated_at": record.updated_at,
        },
        indent=2,
    )


def decode_record(text: str) -> LabRecord:
    """The record in `text`; ValueError if it is not one."""
    try:
        data = json.loads(text)
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        owner = data["owner"]
        return LabRecord(
            name=str(data["name"]),
            network=IPv4Network(data["network"]),
            owner=Owner(pid=int(owner["pid"]), start_time=int(owner["start_time"]))
            if owner
            else None,
            bridge=str(data["bridge"]),
            namespaces=tuple(str(n) for n in data["namespaces"]),
            links=tuple(str(n) for n in data["links"]),
            complete=bool(data["complete"]),
            updated_at=float(data["updated_at"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"missing or malformed field: {exc}") from None


def read_record(path: Path) -> LabRecord | None:
    """The record at `path`; None if there is none or it cannot be read (logged)."""
    try:
        return decode_record(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable lab state file %s: %s", path, exc)
        return None


def write_record(path: Path, record: LabRecord) -> None:
    """Replace the record at `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(encode_record(record) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_record(path: Path) -> None:
    path.unlink(missing_ok=True)


def all_records(state_dir: Path) -> list[LabRecord]:
    records = []
    for path in sorted(record_dir(state_dir).glob("*.json")):
        record = read_record(path)
        if record is not None:
            records.append(record)
    return records


# --- process identity ----------------------------------------------------------------


def owner_of(pid: int) -> Owner:
    """The identity of running process `pid`; UsageError if it is not running."""
    identity = ProcessIdentity.of(pid)
    if identity is None:
        raise UsageError(f"process {pid} is not running, so it cannot own a lab.")
    return Owner(pid=pid, start_time=identity.start_time)


def owner_alive(owner: Owner) -> bool:
    """True while the very process `owner` names runs (a reused PID does not count)."""
    return alive(ProcessIdentity(pid=owner.pid, start_time=owner.start_time))


# --- the machine-wide lock -----------------------------------------------------------


def default_lock_path() -> Path:
    for directory in (Path("/run/lock"), Path("/run")):
        if directory.is_dir() and os.access(directory, os.W_OK):
            return directory / LOCK_NAME
    return Path(tempfile.gettempdir()) / LOCK_NAME


class MachineLock:
    """An exclusive `flock`, re-entrant within this process (a lab's `up` may take
    down a stale lab while holding it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def hold(self, timeout: float) -> Iterator[None]:
        """Hold the lock for the block; LabError if it is not free within `timeout` s."""
        if not self._thread_lock.acquire(timeout=timeout):
            raise self._busy(timeout)
        try:
            if self._depth == 0:
                self._fd = self._take(timeout)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing releases the flock
                    self._fd = None
        finally:
            self._thread_lock.release()

    def _take(self, timeout: float) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise self._busy(timeout) from None
                time.sleep(random.uniform(0.02, 0.08))

    def _busy(self, timeout: float) -> LabError:
        return LabError(
            f"another lab operation held {self.path} for more than {timeout:g} s; try again."
        )


_locks: dict[Path, MachineLock] = {}
_locks_guard = threading.Lock()


def machine_lock(path: Path | None = None) -> MachineLock:
    """The process-wide lock object for `path` (default: /run/lock/servergroup-lab.lock)."""
    path = path or default_lock_path()
    with _locks_guard:
        return _locks.setdefault(path, MachineLock(path))

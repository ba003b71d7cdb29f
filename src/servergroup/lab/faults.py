"""Faults of a whole lab host: crash it, freeze and thaw it (cut and heal are link changes).

Theory of operation
-------------------
A lab host stands for a machine, so a fault of the host hits everything that
runs on it:

- every process whose network namespace is the host's: its host daemon, what
  that daemon started (QEMU too: `-daemonize` detaches QEMU from its parent
  and its session, never from its namespace), and anything run with
  `Lab.exec` / `Lab.popen`;
- its *satellites*: groups of processes that run on the host without being
  in its namespace, each held whole by one freezer cgroup. A lab server is
  one (its own namespace, its own cgroup); which satellites a host has is
  not the lab's knowledge, so a `SatelliteFinder` given to the `Lab` says,
  from the processes found in the host's namespace.

`crash` SIGKILLs all of them, again and again until none is left (a process
may fork while we kill), through a pidfd opened and checked before each
signal, so a PID reused in between is never signalled. It thaws whatever it
killed that was frozen, since a frozen process dies only once thawed.

`freeze` uses the kernel's freezer, not SIGSTOP: the processes of the host's
namespace are moved into a freezer cgroup of the lab's own
(`servergroup-lab/<namespace>`), which is frozen; moving, freezing and
looking again repeat until no process of the namespace is outside it, so a
child forked meanwhile is caught too. Each satellite's own cgroup is frozen
where it is (a lab server's processes must stay in its cgroup, where its
driver looks for them); one that was already frozen (a paused server) is
left alone, and the satellites this freeze froze are written to
`<state_dir>/lab/faults/<namespace>.json` with the processes each held
once frozen, so that `thaw` thaws exactly those and never unpauses a paused
server, nor one that was rebuilt on another host since (its cgroup, named
by the server, then holds processes it did not hold).

The caller and its ancestors are never signalled, moved or frozen, even when
the caller runs inside the host (`servergroup lab exec h1 -- ...`).
Processes of other hosts are never touched: membership is decided per
process by its namespace's inode or its cgroup, never by name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from servergroup.common.process import uninterruptible_threads
from servergroup.lab.errors import LabError
from servergroup.lab.netns import NETNS_DIR, namespace_pids
from servergroup.lab.plan import LabHost, LabStatus

log = logging.getLogger(__name__)

#: The lab's freezer cgroups, one per frozen host, under the freezer hierarchy's root.
CGROUP_PARENT = "servergroup-lab"
#: How long freezing (the kernel's FREEZING -> FROZEN) and killing may take.
FREEZE_TIMEOUT = 10.0  # a task in a long uninterruptible wait freezes late
KILL_TIMEOUT = 5.0
_POLL_INTERVAL = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class Satellite:
    """Processes that run on a lab host outside its namespace, all in one freezer cgroup."""

    name: str  # for messages: "lab server web1"
    cgroup: Path  # the cgroup's directory in the freezer hierarchy


#: A host's satellites, given the host and the processes found in its namespace.
SatelliteFinder = Callable[[LabHost, Sequence[int]], Sequence[Satellite]]


# --- the freezer ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Freezer:
    """The freezer hierarchy of this machine: cgroup v1 `freezer`, else cgroup v2."""

    root: Path

    def host_cgroup(self, netns: str) -> Path:
        return self.root / CGROUP_PARENT / netns


def find_freezer() -> Freezer:
    """The freezer hierarchy (v1 `freezer` first, as the lab driver chooses); LabError if none."""
    v2: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, rest = before.split(), after.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        point = Path(fields[4].encode().decode("unicode_escape"))  # \040 for a space
        if rest[0] == "cgroup" and "freezer" in rest[2].split(","):
            return Freezer(root=point)
        if rest[0] == "cgroup2":
            v2.append(point)
    v2.sort(key=lambda p: p != Path("/sys/fs/cgroup"))
    if v2:
        return Freezer(root=v2[0])
    raise LabError(
        "this machine has no freezer cgroup (v1 freezer or v2) under /sys/fs/cgroup, "
        "so lab hosts cannot be frozen; run the lab where /sys/fs/cgroup is mounted."
    )


def set_frozen(cgroup: Path, frozen: bool) -> None:
    """Ask the kernel to freeze or thaw `cgroup` (v1 `freezer.state`, v2 `cgroup.freeze`)."""
    v1 = cgroup / "freezer.state"
    if v1.exists():
        v1.write_text("FROZEN" if frozen else "THAWED")
    else:
        (cgroup / "cgroup.freeze").write_text("1" if frozen else "0")


def is_frozen(cgroup: Path) -> bool | None:
    """True when frozen, False when thawed, None while changing or when there is no such cgroup."""
    try:
        v1 = cgroup / "freezer.state"
        if v1.exists():
            return {"FROZEN": True, "THAWED": False}.get(v1.read_text().strip())
        wanted = (cgroup / "cgroup.freeze").read_text().strip() == "1"
        events = (cgroup / "cgroup.events").read_text().split()
    except FileNotFoundError:
        return None
    frozen = "frozen" in events and events[events.index("frozen") + 1] == "1"
    return frozen if frozen == wanted else None


def wants_frozen(cgroup: Path) -> bool:
    """Whether `cgroup` was asked to freeze (it may still be freezing)."""
    try:
        v1 = cgroup / "freezer.state"
        if v1.exists():
            return v1.read_text().strip() != "THAWED"
        return (cgroup / "cgroup.freeze").read_text().strip() == "1"
    except FileNotFoundError:
        return False


def cgroup_pids(cgroup: Path) -> list[int]:
    """The live (not zombie) processes of `cgroup`."""
    try:
        text = (cgroup / "cgroup.procs").read_text()
    except FileNotFoundError:
        return []
    return [pid for pid in map(int, text.split()) if _alive(pid)]


def _wait_frozen(cgroups: Iterable[Path], frozen: bool, timeout: float) -> list[Path]:
    """Wait until each of `cgroups` is frozen (or thawed), as asked; those not waited for.

    A cgroup whose request someone else changed meanwhile is not waited for:
    a lab server's cgroup is named by the server, not the host, and when the
    frozen host's lease runs out its server is rebuilt on another host, whose
    driver thaws the cgroup to end the stale processes and start afresh (seen
    in CI: a freeze slowed by load still waited when the rebuild came).
    """
    pending = list(cgroups)
    others: list[Path] = []
    deadline = time.monotonic() + timeout
    while pending:
        pending = [c for c in pending if c.is_dir() and is_frozen(c) is not frozen]
        moved_on = [c for c in pending if wants_frozen(c) is not frozen]
        for c in moved_on:
            log.info(
                "cgroup %s was %s meanwhile: not waited for", c, "thawed" if frozen else "frozen"
            )
        others += moved_on
        pending = [c for c in pending if c not in moved_on]
        if not pending:
            return others
        if time.monotonic() > deadline:
            waiting = [
                tid for pid in cgroup_pids(pending[0]) for tid in uninterruptible_threads(pid)
            ]
            why = (
                f" (threads {', '.join(map(str, waiting[:8]))} are in an uninterruptible wait, "
                "state D: a slow disk or a hung mount holds them)"
                if waiting
                else ""
            )
            raise LabError(
                f"cgroup {pending[0]} did not {'freeze' if frozen else 'thaw'} within "
                f"{timeout:g} s{why}."
            )
        time.sleep(_POLL_INTERVAL)
    return others


# --- processes -----------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def protected_pids() -> frozenset[int]:
    """This process and its ancestors: never signalled, moved or frozen by a fault."""
    me = psutil.Process()
    return frozenset({me.pid, *(parent.pid for parent in me.parents())})


def host_pids(netns: str) -> list[int]:
    """The processes of a lab host's namespace, the caller's own line excluded."""
    protected = protected_pids()
    return [pid for pid in namespace_pids(netns) if pid not in protected]


def _in_namespace(pid: int, netns: str) -> bool:
    try:
        ns = os.stat(NETNS_DIR / netns)
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino)


def _kill(pid: int, still_ours: Callable[[int], bool]) -> bool:
    """SIGKILL `pid` through a pidfd if, once the pidfd is open, it is still ours."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not still_ours(pid):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


# --- the record of what a freeze froze -------------------------------------------------


def record_path(state_dir: Path, netns: str) -> Path:
    return state_dir / "lab" / "faults" / f"{netns}.json"


def record_frozen(
    state_dir: Path,
    netns: str,
    cgroups: Sequence[Path],
    pids: Mapping[Path, Iterable[int]] | None = None,
) -> None:
    """Note that a freeze of the host in `netns` froze these satellite cgroups.

    `pids`: the processes each held once frozen (known after the freeze),
    by which `recorded_frozen` tells a cgroup another host took over since.
    """
    path = record_path(state_dir, netns)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    held = {str(c): sorted(p) for c, p in (pids or {}).items()}
    tmp.write_text(json.dumps({"frozen_cgroups": [str(c) for c in cgroups], "pids": held}) + "\n")
    tmp.replace(path)


def recorded_frozen(state_dir: Path, netns: str) -> list[Path]:
    """The satellite cgroups a freeze of the host in `netns` froze and that are still its own.

    [] if none or the record is unreadable. A lab server's cgroup is named
    by the server, not the host: once the frozen host's lease runs out the
    server is rebuilt on another host, in the same cgroup, whose driver
    thaws it and starts new processes there. A cgroup that holds a process
    it did not hold when this freeze froze it belongs to that host now, and
    is left out, so that `thaw` does not unpause it there nor `crash` kill
    it. (A record without the processes, from a freeze cut short, keeps
    every cgroup.)
    """
    try:
        data = json.loads(record_path(state_dir, netns).read_text())
        cgroups = [Path(c) for c in data["frozen_cgroups"]]
        held = {Path(c): frozenset(map(int, p)) for c, p in data.get("pids", {}).items()}
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the unreadable fault record of %s: %s", netns, exc)
        return []
    ours = []
    for cgroup in cgroups:
        frozen_with = held.get(cgroup)
        newcomers = set(cgroup_pids(cgroup)) - frozen_with if frozen_with is not None else set()
        if newcomers:
            log.info(
                "cgroup %s holds processes %s it did not hold when frozen with %s: another host"
                " took it over, left as it is",
                cgroup,
                sorted(newcomers)[:8],
                netns,
            )
        else:
            ours.append(cgroup)
    return ours


# --- the faults ----------------------------------------------------------------------


def crash(host: LabHost, *, finder: SatelliteFinder | None, state_dir: Path) -> int:
    """SIGKILL every process of `host` and of its satellites; the number killed."""
    pids = host_pids(host.netns)
    satellites = [s.cgroup for s in finder(host, pids)] if finder is not None else []
    satellites += [c for c in recorded_frozen(state_dir, host.netns) if c not in satellites]
    freezer_root = _freezer_or_none()
    frozen = [c for c in satellites if wants_frozen(c)]
    if freezer_root is not None and wants_frozen(freezer_root.host_cgroup(host.netns)):
        frozen.append(freezer_root.host_cgroup(host.netns))
    protected = protected_pids()

    def in_satellite(pid: int) -> bool:
        return any(pid in cgroup_pids(c) for c in satellites)

    def ours(pid: int) -> bool:
        return pid not in protected and (_in_namespace(pid, host.netns) or in_satellite(pid))

    killed: set[int] = set()
    deadline = time.monotonic() + KILL_TIMEOUT
    while True:
        targets = set(host_pids(host.netns))
        for cgroup in satellites:
            targets.update(cgroup_pids(cgroup))
        targets -= protected
        if not targets:
            break
        if time.monotonic() > deadline:
            raise LabError(
                f"processes {sorted(targets)} of lab host {host.name} did not exit after SIGKILL."
            )
        killed.update(pid for pid in targets if _kill(pid, ours))
        # A frozen process dies of its SIGKILL only once thawed.
        for cgroup in frozen:
            with contextlib.suppress(FileNotFoundError):
                set_frozen(cgroup, False)
        frozen = []
        time.sleep(_POLL_INTERVAL)
    record_path(state_dir, host.netns).unlink(missing_ok=True)
    log.info("lab host %s crashed: %d process(es) killed", host.name, len(killed))
    return len(killed)


def freeze(host: LabHost, *, finder: SatelliteFinder | None, state_dir: Path) -> int:
    """Freeze every process of `host` and of its satellites; the number of processes frozen."""
    freezer = find_freezer()
    cgroup = freezer.host_cgroup(host.netns)
    try:
        cgroup.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(f"cannot make the freezer cgroup {cgroup}: {exc.strerror}.") from None
    pids = host_pids(host.netns)
    satellites = [s.cgroup for s in finder(host, pids)] if finder is not None else []
    # Record first: a freeze interrupted half-way is still undone by `thaw`.
    mine = [c for c in satellites if c.is_dir() and not wants_frozen(c)]
    mine += [c for c in recorded_frozen(state_dir, host.netns) if c not in mine]
    record_frozen(state_dir, host.netns, mine)
    for satellite in mine:
        with contextlib.suppress(FileNotFoundError):
            set_frozen(satellite, True)
    set_frozen(cgroup, True)
    deadline = time.monotonic() + FREEZE_TIMEOUT
    while True:
        inside = set(cgroup_pids(cgroup))
        outside = [pid for pid in host_pids(host.netns) if pid not in inside]
        if not outside:
            break
        if time.monotonic() > deadline:
            raise LabError(
                f"processes {outside} of lab host {host.name} could not be frozen within "
                f"{FREEZE_TIMEOUT:g} s."
            )
        for pid in outside:
            _move(pid, cgroup)
    others = _wait_frozen([cgroup, *mine], True, FREEZE_TIMEOUT)
    mine = [c for c in mine if c not in others]
    held = {c: cgroup_pids(c) for c in mine}
    record_frozen(state_dir, host.netns, mine, held)
    count = len(cgroup_pids(cgroup)) + sum(len(p) for p in held.values())
    log.info("lab host %s frozen: %d process(es)", host.name, count)
    return count


def _move(pid: int, cgroup: Path) -> None:
    try:
        (cgroup / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        if exc.errno != errno.ESRCH:  # gone meanwhile
            raise LabError(
                f"cannot move process {pid} into {cgroup} to freeze it: {exc.strerror}."
            ) from None


def thaw(host_netns: str, *, state_dir: Path) -> bool:
    """Thaw what `freeze` froze of the host in `host_netns`; False if it was not frozen."""
    freezer = _freezer_or_none()
    cgroups = recorded_frozen(state_dir, host_netns)
    if freezer is not None and wants_frozen(freezer.host_cgroup(host_netns)):
        cgroups.append(freezer.host_cgroup(host_netns))
    for cgroup in cgroups:
        with contextlib.suppress(FileNotFoundError):
            set_frozen(cgroup, False)
    _wait_frozen(cgroups, False, FREEZE_TIMEOUT)
    record_path(state_dir, host_netns).unlink(missing_ok=True)
    return bool(cgroups)


def host_frozen(netns: str) -> bool:
    """Whether the host in `netns` is frozen (or freezing)."""
    freezer = _freezer_or_none()
    return freezer is not None and wants_frozen(freezer.host_cgroup(netns))


def with_faults(status: LabStatus) -> LabStatus:
    """`status` with each host's `frozen` read from its freezer cgroup."""
    return replace(
        status, hosts=tuple(replace(h, frozen=host_frozen(h.netns)) for h in status.hosts)
    )


def release(namespaces: Iterable[str], *, state_dir: Path) -> None:
    """Thaw these hosts before they are removed (a frozen process cannot be ended)."""
    for netns in namespaces:
        thaw(netns, state_dir=state_dir)


def forget(namespaces: Iterable[str]) -> None:
    """Remove the freezer cgroups of removed hosts (empty once their processes ended)."""
    freezer = _freezer_or_none()
    if freezer is None:
        return
    for netns in namespaces:
        cgroup = freezer.host_cgroup(netns)
        deadline = time.monotonic() + 2.0
        while True:
            try:
                cgroup.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # Right after its last process exits a cgroup can be busy for a moment.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("cannot remove the freezer cgroup %s: %s", cgroup, exc.strerror)
                    break
                time.sleep(_POLL_INTERVAL)


def _freezer_or_none() -> Freezer | None:
    try:
        return find_freezer()
    except (LabError, OSError):
        return None


__all__ = [
    "CGROUP_PARENT",
    "Freezer",
    "Satellite",
    "SatelliteFinder",
    "crash",
    "find_freezer",
    "freeze",
    "host_frozen",
    "thaw",
    "with_faults",
]

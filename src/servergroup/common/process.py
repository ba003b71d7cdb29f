"""Which process is which (identity that survives PID reuse), and stopping processes safely.

Theory of operation
-------------------
A PID names a process only while it runs: once it exits and is reaped, the
kernel may hand the same number to a stranger. So a process we mean to
remember (the owner of a lab, the writer of a part file, a daemon we
started in the background) is remembered as a `ProcessIdentity`: its PID
and its **start time**, the kernel's count of clock ticks from boot to the
process's creation (field 22 of /proc/PID/stat). That number never changes
for the life of a process and is not affected by the wall clock being set,
so two processes, or one process before and after a restart, compare it
exactly; a PID that was reused has another start time. (psutil's
`create_time()` adds the boot time read from the wall clock, which moves
when the clock is stepped, so it cannot be stored and compared later; for
everything else, status, command line and waiting, psutil is used.) When
asked, `ProcessIdentity.of` also checks the command line, so that a PID
file or record pointing at some unrelated process is not believed.

Stopping (`stop_process`, `stop_process_async`) is SIGTERM, a wait of
`term_timeout`, then SIGKILL and a wait of `kill_timeout`. A stopped
process (SIGSTOP, a frozen cgroup) would sit on SIGTERM, so SIGCONT is sent
first. It never signals a stranger: the process is opened as a **pidfd**
(Linux 5.3+) and its identity is checked *after* the open, so every later
signal and the wait go to that very process even if its PID is reused
meanwhile; where pidfds are missing, psutil's `Process`, which re-checks the
identity before each signal, takes over. A zombie counts as ended; reaping
a child is left to whoever started it (its `Popen` or asyncio `Process`
would otherwise report a wrong exit status).

`stop_all` stops a set of processes that a caller lists afresh on each
round (everything in a network namespace, a cgroup, or a process group,
`group_members`), so that a process forked during the stop is ended too;
it raises `ProcessFailed` (one sentence) if anything outlives SIGKILL.

`die_with_parent` and `become_subreaper` are the two `prctl(2)` settings a
supervisor and its child use: the child gets a signal when its supervisor
dies (so that no daemon outlives the process that would clean up after
it), and the supervisor inherits the orphans of its child's descendants (so
that what the child started and left running is found among its own
children, not among init's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from servergroup.common.errors import ProcessFailed

if TYPE_CHECKING:
    import psutil

#: How often waits without a pidfd (a process group, a listed set) look again.
POLL_INTERVAL = 0.02

#: psutil's `STATUS_ZOMBIE`, `STATUS_DEAD`, `STATUS_STOPPED` and `STATUS_TRACING_STOP`
#: (strings, as psutil documents them; a test checks they still are): psutil itself
#: (~10 ms of start-up) is imported by the functions that use it, on first use.
_GONE_STATES = frozenset({"zombie", "dead"})
_STOPPED_STATES = frozenset({"stopped", "tracing-stop", *_GONE_STATES})


def _stat_fields(pid: int, path: str | None = None) -> list[str] | None:
    """Fields 3 on of /proc/PID/stat (state first), or None when there is no such process."""
    try:
        stat = Path(path or f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and ')': the fields resume after its last ')'.
    return stat[stat.rindex(")") + 2 :].split() or None


def process_state(pid: int) -> str | None:
    """The state letter of `pid` (R, S, T, t, Z, X, ...; see proc(5)), None when it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def uninterruptible_threads(pid: int) -> list[int]:
    """The threads of `pid` in an uninterruptible wait (state D, see proc(5)), by tid.

    Such a thread cannot be frozen or killed until the wait ends (a disk write
    held back under heavy writeback, for one); empty when there is none or the
    process is gone.
    """
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return []
    return [
        tid
        for tid in tids
        if (fields := _stat_fields(tid, f"/proc/{pid}/task/{tid}/stat")) and fields[0] == "D"
    ]


def process_start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot), None if no such process is running.

    A zombie (exited, not yet reaped) counts as not running.
    """
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5), counted from field 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadTimes:
    """One thread's identity and the CPU time it used (clock ticks, `os.sysconf('SC_CLK_TCK')`)."""

    tid: int
    start_time: int  # clock ticks after boot: tells the thread from a later one with its tid
    cpu_ticks: int  # user + system time (fields 14 and 15 of proc(5))


def thread_times(tid: int) -> ThreadTimes | None:
    """The CPU time of thread `tid` (any thread of any process), None when it is gone.

    Read from /proc/TID/task/TID/stat: /proc/TID/stat of a thread that does
    not lead its process would count the whole process.
    """
    fields = _stat_fields(tid, f"/proc/{tid}/task/{tid}/stat")
    if fields is None or fields[0] in ("Z", "X") or len(fields) < 20:
        return None
    # Fields 14, 15 and 22 of proc(5), counted from field 3.
    return ThreadTimes(
        tid=tid, start_time=int(fields[19]), cpu_ticks=int(fields[11]) + int(fields[12])
    )


#: How long `command_line` waits for the arguments of a process in an exec.
EXEC_WAIT = 0.25
_EXEC_POLL = 0.001
#: PF_KTHREAD in the flags of /proc/PID/stat (a kernel thread has no command line).
_PF_KTHREAD = 0x00200000


def command_line(pid: int) -> list[str] | None:
    """The argv of a running process, or None (gone, a zombie, or not ours to read).

    A process in the middle of an exec reads, for a moment, as having no
    arguments at all: the new image is mapped before its arguments are
    placed in it. Taken at its word, that moment made a lab server's guest
    agent, started through two execs, look absent to a check (seen in CI).
    So an empty command line of a process that is not a kernel thread is
    read again, for up to `EXEC_WAIT` seconds.
    """
    import psutil

    deadline = None
    while True:
        try:
            proc = psutil.Process(pid)
            if proc.status() in _GONE_STATES:
                return None
            argv = proc.cmdline()
        except psutil.Error:
            return None
        if argv or _kernel_thread(pid):
            return argv
        now = time.monotonic()
        deadline = deadline or now + EXEC_WAIT
        if now > deadline:
            return argv  # exec'd with no arguments at all (rare, but allowed)
        time.sleep(_EXEC_POLL)


def _kernel_thread(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and len(fields) > 6 and int(fields[6]) & _PF_KTHREAD != 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessIdentity:
    """One process, told apart from any later process that gets the same PID."""

    pid: int
    #: Clock ticks after boot at which it started (see the module's docstring).
    start_time: int

    @classmethod
    def of(
        cls, pid: int, *, argv_check: Callable[[list[str]], bool] | None = None
    ) -> ProcessIdentity | None:
        """The identity of running `pid`; None if it is not running or fails `argv_check`."""
        start = process_start_time(pid)
        if start is None:
            return None
        if argv_check is not None:
            argv = command_line(pid)
            if argv is None or not argv_check(argv) or process_start_time(pid) != start:
                return None
        return cls(pid=pid, start_time=start)

    @classmethod
    def me(cls) -> ProcessIdentity:
        """This very process."""
        identity = cls.of(os.getpid())
        assert identity is not None, "a running process reads its own /proc entry"
        return identity

    def __str__(self) -> str:
        return f"pid {self.pid}"


def alive(target: ProcessIdentity | int) -> bool:
    """True while the process runs (not a zombie); for an identity, that very process."""
    if isinstance(target, ProcessIdentity):
        return process_start_time(target.pid) == target.start_time
    if process_start_time(target) is not None:
        return True
    if Path("/proc/self/stat").exists():
        return False
    import psutil

    return psutil.pid_exists(target)  # no /proc to read: the best the system can tell


def is_stopped(pid: int) -> bool:
    """True when `pid` is stopped (SIGSTOP, a debugger) or gone."""
    import psutil

    try:
        return psutil.Process(pid).status() in _STOPPED_STATES
    except psutil.Error:
        return True


def wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Wait until a SIGSTOP sent to `pid` has taken effect (signals arrive asynchronously)."""
    deadline = time.monotonic() + timeout
    while not is_stopped(pid):
        if time.monotonic() >= deadline:
            raise ProcessFailed(f"process {pid} did not stop within {timeout:g} s of SIGSTOP.")
        time.sleep(0.005)


class Ended(Enum):
    """How `stop_process` found or left the process."""

    GONE = "gone"  # not running (or not the process named) when asked
    TERMINATED = "terminated"  # exited within term_timeout of SIGTERM
    KILLED = "killed"  # needed SIGKILL


# --- one process ----------------------------------------------------------------------


class _Handle:
    """A process to signal and wait for: a pidfd where the kernel has them, else psutil."""

    def __init__(self, pidfd: int | None, proc: psutil.Process | None) -> None:
        self.pidfd = pidfd
        self.proc = proc

    @classmethod
    def open(cls, target: ProcessIdentity | int) -> _Handle | None:
        pid = target.pid if isinstance(target, ProcessIdentity) else target
        pidfd: int | None = None
        proc: psutil.Process | None = None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except (AttributeError, OSError):
            import psutil

            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                return None
        # Checked after the open: from here on the handle names this very process.
        if not alive(target):
            if pidfd is not None:
                os.close(pidfd)
            return None
        return cls(pidfd, proc)

    def signal(self, sig: signal.Signals) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)
        elif self.proc is not None:
            import psutil

            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (a zombie counts), False after `timeout`."""
        if self.pidfd is not None:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)  # readable once the process exits
            return bool(poller.poll(max(0, int(timeout * 1000))))
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self._running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    async def wait_async(self, timeout: float) -> bool:
        if self.pidfd is not None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(self.pidfd, readable)
            try:
                async with asyncio.timeout(timeout):
                    await exited
                return True
            except TimeoutError:
                return False
            finally:
                loop.remove_reader(self.pidfd)
        deadline = time.monotonic() + timeout
        while self._running():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True

    def _running(self) -> bool:
        import psutil

        assert self.proc is not None
        try:
            return self.proc.is_running() and self.proc.status() not in _GONE_STATES
        except psutil.Error:
            return False

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)


def stop_process(
    target: ProcessIdentity | int,
    *,
    term_timeout: float,
    kill_timeout: float = 5.0,
) -> Ended:
    """SIGTERM, wait `term_timeout`, SIGKILL, wait `kill_timeout`; never another process.

    Raises `ProcessFailed` if the process outlives SIGKILL by `kill_timeout`.
    """
    handle = _Handle.open(target)
    if handle is None:
        return Ended.GONE
    pid = target.pid if isinstance(target, ProcessIdentity) else target
    try:
        handle.signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
        handle.signal(signal.SIGTERM)
        if handle.wait(term_timeout):
            return Ended.TERMINATED
        handle.signal(signal.SIGKILL)
        if handle.wait(kill_timeout):
            return Ended.KILLED
        raise ProcessFailed(f"process {pid} did not exit within {kill_timeout:g} s of SIGKILL.")
    finally:
        handle.close()


async def stop_process_async(
    target: ProcessIdentity | int,
    *,
    term_timeout: float,
    kill_timeout: float = 5.0,
) -> Ended:
    """`stop_process` for asyncio code: the waits do not block the event loop."""
    handle = _Handle.open(target)
    if handle is None:
        return Ended.GONE
    pid = target.pid if isinstance(target, ProcessIdentity) else target
    try:
        handle.signal(signal.SIGCONT)
        handle.signal(signal.SIGTERM)
        if await handle.wait_async(term_timeout):
            return Ended.TERMINATED
        handle.signal(signal.SIGKILL)
        if await handle.wait_async(kill_timeout):
            return Ended.KILLED
        raise ProcessFailed(f"process {pid} did not exit within {kill_timeout:g} s of SIGKILL.")
    finally:
        handle.close()


# --- sets of processes ----------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """The live processes (zombies excluded) of process group `pgid`."""
    import psutil

    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() not in _GONE_STATES:
                members.append(proc.pid)
    return members


def _signal_all(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_all(
    listing: Callable[[], list[int]],
    *,
    what: str,
    term_timeout: float,
    kill_timeout: float = 5.0,
    after_term: Callable[[], None] | None = None,
) -> int:
    """SIGTERM what `listing()` names, wait, SIGKILL what is left; the number first listed.

    `listing` is called afresh on each round (it should name only live
    processes), so that a process forked meanwhile is ended too; SIGKILL is
    repeated on each round for the same reason. `after_term` runs once the
    SIGTERMs are sent (a frozen cgroup thaws there). Raises `ProcessFailed`
    naming `what` if anything outlives SIGKILL by `kill_timeout`.
    """
    pids = first = listing()
    if pids:
        _signal_all(pids, signal.SIGCONT)
        _signal_all(pids, signal.SIGTERM)
        if after_term is not None:
            after_term()
        deadline = time.monotonic() + term_timeout
        while pids and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            pids = listing()
    deadline = time.monotonic() + kill_timeout
    while pids:
        _signal_all(pids, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ProcessFailed(f"processes {pids} of {what} did not exit after SIGKILL.")
        time.sleep(POLL_INTERVAL)
        pids = listing()
    return len(first)


async def stop_group_async(pgid: int, *, term_timeout: float, kill_timeout: float = 5.0) -> None:
    """SIGTERM process group `pgid`, wait until it is empty, then SIGKILL it; asyncio.

    Safe against reuse while any member lives: the kernel does not hand out
    a PID still in use as a group's ID.
    """
    for sig, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        if sig == signal.SIGTERM:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + timeout
        while group_members(pgid):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_INTERVAL)
        else:
            return
    raise ProcessFailed(
        f"processes of group {pgid} did not exit within {kill_timeout:g} s of SIGKILL."
    )


def stop_group(pgid: int, *, term_timeout: float, kill_timeout: float = 5.0) -> int:
    """SIGTERM process group `pgid`, wait, SIGKILL what is left; blocking."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGCONT)
    return stop_all(
        lambda: group_members(pgid),
        what=f"process group {pgid}",
        term_timeout=term_timeout,
        kill_timeout=kill_timeout,
    )


# --- prctl settings of a supervisor and its child ------------------------------------

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False  # not Linux, or no prctl: the caller carries on without it


def die_with_parent(sig: signal.Signals = signal.SIGTERM, *, parent: int | None = None) -> bool:
    """Have the kernel send `sig` to this process when its parent dies.

    Returns False when that cannot be set, or when `parent` is given and is
    no longer this process's parent (it died before the setting took hold).
    """
    if not _prctl(_PR_SET_PDEATHSIG, int(sig)):
        return False
    return parent is None or os.getppid() == parent


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (False if unsupported)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


__all__ = [
    "Ended",
    "ProcessIdentity",
    "ThreadTimes",
    "alive",
    "become_subreaper",
    "command_line",
    "die_with_parent",
    "group_members",
    "is_stopped",
    "process_start_time",
    "process_state",
    "stop_all",
    "stop_group",
    "stop_group_async",
    "stop_process",
    "stop_process_async",
    "thread_times",
    "wait_stopped",
]

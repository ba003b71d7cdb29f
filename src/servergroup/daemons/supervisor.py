"""The host daemon's supervisor: it knows for certain when the daemon died, and cleans up.

Theory of operation (docs/design/services.md, "Supervision"). A host
daemon's session lease outlives the daemon by up to its TTL, and with it
the ownership keys of the service instances the daemon's node role ran:
nobody else may start them until the lease expires. The daemon's parent
knows at once, and for certain, that it died (the kernel tells it), so it
can do what the lease would do, sooner: stop the instances the daemon's
ledger lists and revoke the lease (`services.cleanup`).

`servergroup host --supervised ...` (what `servergroup up` runs) is this
supervisor: a small synchronous loop that

- starts the same command without `--supervised` as its child, in a
  process group of its own (so a terminal's Ctrl-C reaches the supervisor
  only, and is forwarded once), with `SERVERGROUP_SUPERVISOR_PID` set so
  that the child asks the kernel for SIGTERM should the supervisor die
  (`common.process.die_with_parent`): no daemon outlives its supervisor;
- forwards SIGTERM and SIGINT to the child and, once asked to stop, gives
  it `CHILD_STOP_TIMEOUT` before SIGKILL;
- waits on the child's pidfd (and a signal wake-up pipe), so the death is
  seen the moment it happens;
- is the **subreaper** of the child's descendants (and reaps them as they
  exit, woken by SIGCHLD): an agent action the
  child had in flight (a `start` still running, in its own process group)
  becomes the supervisor's child when the daemon dies, and is killed, group
  and all, before the cleanup's `stop`, so that no start can finish after
  its stop (`kill_agent_actions`: every orphan in an agent's environment,
  and a fork of the daemon caught before it became the agent);
- after the child ended, unless it ended cleanly when asked to and left no
  ledger, runs `after_death`: read the ledger, stop what it lists, write a
  block record for a stop that failed (and then revoke nothing), else
  revoke the ledger's lease and the lease of the daemon's registry record
  (`registry/hosts/<name>` when its pid is the dead child's), then clear the
  ledger (keeping only failed stops it could not record);
- at its own start, first cleans up after a daemon that died together with
  its supervisor (`lab crash` of the host's processes, all nodes killed at
  once), when that daemon's ledger is still there: its instances may run
  while their keys expire, and they are stopped before the new daemon runs;
- then restarts the child after a backoff (0.5 s doubling to 30 s, with
  jitter; back to 0.5 s once a child ran `STEADY_AFTER` seconds), unless it
  was asked to stop or the child refused its command line (exit status 2).

It restarts the daemon itself, rather than exiting for someone else to
restart, because under `servergroup up` nobody else would; under systemd
the unit restarts the daemon and runs the same cleanup as
`servergroup host cleanup` (`ExecStopPost=`, servergroup/data/systemd/), and no
supervisor process is needed. The supervisor survives the store being
unreachable (the cleanup then stops the instances, logs one sentence and
leaves the lease to expire) and any failure of its cleanup (logged as a
BUG; the loop carries on).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psutil

from servergroup.common.backoff import Backoff
from servergroup.common.logsetup import log_bug
from servergroup.common.process import ProcessIdentity, alive, become_subreaper
from servergroup.config import Config, Endpoint
from servergroup.coordination import CoordinationError, Coordinator, LocalEtcd, connect
from servergroup.servers.model import RecordError, decode_host
from servergroup.servers.registry import host_key
from servergroup.services.cleanup import CleanupReport, remaining, settle, stop_all
from servergroup.services.ledger import (
    Ledger,
    LedgerError,
    clear_ledger,
    ledger_path,
    read_ledger,
    write_ledger,
)

log = logging.getLogger(__name__)

#: Set in the child's environment: the supervisor's pid (see `die_with_parent`).
SUPERVISOR_ENV = "SERVERGROUP_SUPERVISOR_PID"
#: The option that makes `servergroup host` a supervisor of itself.
SUPERVISED_OPTION = "--supervised"
#: How long the child gets to end after a forwarded SIGTERM, before SIGKILL.
CHILD_STOP_TIMEOUT = 15.0
#: Restart delays after a death.
RESTART_BACKOFF = Backoff(initial=0.5, max_delay=30.0, jitter=(0.8, 1.2))
#: A child that ran this long died of something new: the next restart is at the first delay.
STEADY_AFTER = 30.0
#: Exit status of a command line the child refused (click's usage error): no restart.
USAGE_EXIT = 2
#: Exit status of a command stopped by SIGINT/SIGTERM (`common.errors.Interrupted`). The
#: daemon exits 0 once its event loop runs (`cli.common.run_daemon`); 130 only for a
#: SIGINT before that.
INTERRUPTED_EXIT = 130
#: The second look for agent actions left running (see `Supervisor._after`).
AGAIN_AFTER = 0.02
#: How often orphans are reaped while a cleanup runs (see `_reaping`).
REAP_INTERVAL = 0.05
#: In the environment of every agent action (and of what an action started).
AGENT_ENV = "OCF_RESOURCE_INSTANCE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Death:
    """How the child ended."""

    pid: int
    returncode: int  # negative: killed by that signal (Popen's convention)
    asked: bool  # we had asked it to stop

    @property
    def clean(self) -> bool:
        """It ended as a daemon ends when asked (or of its own accord, with success)."""
        if self.returncode == 0:
            return True
        return self.asked and self.returncode in (INTERRUPTED_EXIT, -signal.SIGTERM)

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"host daemon pid {self.pid} was killed by {name}"
        return f"host daemon pid {self.pid} exited with status {self.returncode}"


# -- the cleanup -----------------------------------------------------------------------------


def store_endpoints(config: Config) -> tuple[Endpoint, ...]:
    """The configured etcd endpoints, else the local etcd's if it runs (never starting it)."""
    if config.coordination.endpoints:
        return config.coordination.endpoints
    status = LocalEtcd(config).status()
    return (status.endpoint,) if status.running else ()


def looks_like_host_daemon(argv: list[str]) -> bool:
    """True for the command line of `servergroup ... host ...` (not `host cleanup`)."""
    return (
        any(os.path.basename(w) == "servergroup" for w in argv)
        and "host" in argv
        and "cleanup" not in argv
    )


def is_host_daemon(pid: int) -> bool:
    """True when `pid` runs `servergroup ... host` (a live daemon: its ledger is its own)."""
    return ProcessIdentity.of(pid, argv_check=looks_like_host_daemon) is not None


def ledger_file(config: Config, node: str) -> Path:
    """The ledger of `node`'s host daemon under `config`'s state directory."""
    return ledger_path(Path(os.path.abspath(config.state_dir)), node)


async def _registry_lease(coordinator: Coordinator, node: str, dead_pid: int | None) -> int | None:
    """The lease of `registry/hosts/<node>` when the dead daemon wrote that record."""
    kv = await coordinator.get(host_key(node))
    if kv is None or not kv.lease:
        return None
    try:
        record = decode_host(kv.value)
    except RecordError:
        return None
    ours = record.pid == dead_pid if dead_pid is not None else not alive(record.pid)
    return kv.lease if ours else None


async def after_death(config: Config, node: str, dead_pid: int | None) -> CleanupReport | None:
    """Clean up after the host daemon of `node` (pid `dead_pid`, if known) died.

    Returns the report, or None when there was nothing it could act on (an
    unreadable ledger, a ledger of a live daemon). Logs one sentence either way.
    """
    path = ledger_file(config, node)
    try:
        ledger = read_ledger(path)
    except LedgerError as exc:
        log.warning("%s; nothing stopped or revoked: the lease expires on its own", exc)
        return None
    if ledger is not None and ledger.pid != dead_pid and is_host_daemon(ledger.pid):
        log.warning(
            "the ledger %s belongs to host daemon pid %d, which still runs; not cleaning up",
            path,
            ledger.pid,
        )
        return None
    if dead_pid is None and ledger is not None:
        dead_pid = ledger.pid
    work = ledger or Ledger(node=node, lease=0, pid=dead_pid or 0, ocf_root="/")
    stops = await stop_all(work)  # first: the lease may expire any moment
    endpoints = await asyncio.to_thread(store_endpoints, config)
    coordinator = connect(config, endpoints=endpoints) if endpoints else None
    unreachable: str | None = None if endpoints else "no etcd endpoint and no local etcd"
    try:
        extra: tuple[int, ...] = ()
        if coordinator is not None:
            try:
                lease = await _registry_lease(coordinator, node, dead_pid)
            except CoordinationError as exc:
                unreachable = str(exc)
                await coordinator.close()
                coordinator = None
            else:
                extra = (lease,) if lease else ()
        report = await settle(work, stops, coordinator, extra_leases=extra)
    finally:
        if coordinator is not None:
            await coordinator.close()
    if unreachable is not None:
        report = dataclasses.replace(report, store_error=unreachable)
    if ledger is not None:
        rest = remaining(ledger, report)
        if rest.entries:
            write_ledger(path, rest)
        else:
            clear_ledger(path)
    log.info("after the host daemon died: %s", report.describe())
    return report


def kill_agent_actions(
    pids: Iterable[int], *, is_daemon_fork: Callable[[list[str]], bool] | None = None
) -> list[int]:
    """SIGKILL the processes among `pids` that are, or are about to be, agent actions.

    An action the daemon had in flight (a `start` still running: the runner
    gives it a session of its own) must not go on after the cleanup's `stop`,
    or the instance would run with nobody owning it; a process a `start`
    left behind is about to be stopped anyway. They are told by
    `OCF_RESOURCE_INSTANCE` in their environment, and a fork of the daemon
    that had not yet become the agent when the daemon died by its command
    line being the daemon's own (`is_daemon_fork`). Each is killed with its
    process group when it leads one. Returns the pids killed.
    """
    killed = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            env = process.environ()
            argv = process.cmdline()
        except psutil.Error:
            continue
        if AGENT_ENV not in env and not (is_daemon_fork is not None and is_daemon_fork(argv)):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def unit_processes() -> list[int]:
    """The other processes of this process's cgroup (v2): under systemd, the unit's.

    What `servergroup host cleanup` looks through for agent actions when
    systemd runs it as `ExecStopPost=` (with `KillMode=process`, systemd
    signalled the daemon only). Empty when the cgroup cannot be read.
    """
    try:
        line = next(
            (x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::")),
            None,
        )
        if line is None or not line[3:].strip("/"):
            return []  # no cgroup v2, or its root: that is everyone's
        procs = Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "cgroup.procs"
        pids = [int(x) for x in procs.read_text().split()]
    except (OSError, ValueError):
        return []
    mine = {os.getpid(), os.getppid()}
    return [pid for pid in pids if pid not in mine]


def _other_children(child: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process().children() if p.pid != child]
    except psutil.Error:
        return []


def _reap_orphans(child: int | None) -> None:
    """Reap exited orphans that became ours as subreaper (never the child: its Popen does)."""
    try:
        zombies = [
            p.pid
            for p in psutil.Process().children()
            if p.pid != child and p.status() == psutil.STATUS_ZOMBIE
        ]
    except psutil.Error:
        return
    for pid in zombies:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def _reaping() -> Iterator[None]:
    """Reap orphans every `REAP_INTERVAL` while the body runs (the cleanup's agent stops).

    As subreaper this process inherits what the dead daemon's agents started
    (a web server of `ocf:heartbeat:anything`). An agent's `stop` kills it
    and then asks `kill -0 PID` until it is gone: a zombie nobody reaps
    answers as alive, so the stop would time out and the instance be blocked.
    """
    done = threading.Event()

    def reap() -> None:
        while not done.wait(REAP_INTERVAL):
            _reap_orphans(None)

    reaper = threading.Thread(target=reap, name="orphan reaper", daemon=True)
    reaper.start()
    try:
        yield
    finally:
        done.set()
        reaper.join()


# -- the loop --------------------------------------------------------------------------------


class Supervisor:
    """Runs `argv` as the supervised host daemon of `node` (see the module's docstring)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        config: Config,
        node: str,
        backoff: Backoff = RESTART_BACKOFF,
        child_stop_timeout: float = CHILD_STOP_TIMEOUT,
        cleanup: Callable[[Config, str, int | None], object] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.config = config
        self.node = node
        self.backoff = backoff
        self.child_stop_timeout = child_stop_timeout
        self._cleanup = cleanup
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_requested = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    # signals only set a flag and forward; the loop does the rest
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested += 1
        child = self.child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGKILL if self.stop_requested > 2 else signum)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _sleep(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if a signal comes."""
        deadline = time.monotonic() + delay
        while not self.stop_requested and (left := deadline - time.monotonic()) > 0:
            select.select([self._wake_r], [], [], left)
            self._drain()
            _reap_orphans(None)

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        """Wait for the child to exit; once asked to stop, SIGKILL it after the stop timeout."""
        pidfd = os.pidfd_open(child.pid)
        kill_at: float | None = None
        try:
            while child.poll() is None:
                if self.stop_requested and kill_at is None:
                    kill_at = time.monotonic() + self.child_stop_timeout
                timeout = 5.0 if kill_at is None else max(0.0, kill_at - time.monotonic())
                select.select([pidfd, self._wake_r], [], [], timeout)
                self._drain()
                _reap_orphans(child.pid)
                if kill_at is not None and time.monotonic() >= kill_at and child.poll() is None:
                    log.warning(
                        "host daemon pid %d did not stop within %g s; killing it",
                        child.pid,
                        self.child_stop_timeout,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        child.kill()
                    kill_at = float("inf")
        finally:
            os.close(pidfd)
        return child.wait()

    def _after(self, death: Death) -> None:
        """Kill leftover agent actions, then clean up unless the child ended cleanly."""

        def is_fork(argv: list[str]) -> bool:
            return argv == self.argv

        killed = kill_agent_actions(_other_children(death.pid), is_daemon_fork=is_fork)
        # Once more a moment later: a process caught in the middle of its exec (its
        # environment not yet readable) shows what it is now.
        time.sleep(AGAIN_AFTER)
        killed += kill_agent_actions(_other_children(death.pid), is_daemon_fork=is_fork)
        if killed:
            log.info("killed %d agent action(s) the host daemon left running", len(killed))
        path = ledger_file(self.config, self.node)
        if death.clean and not path.exists():
            return
        cleanup = self._cleanup or (lambda c, n, p: asyncio.run(after_death(c, n, p)))
        try:
            with _reaping():
                cleanup(self.config, self.node, death.pid)
        except Exception:
            log_bug(log, "the supervisor's cleanup")
        _reap_orphans(None)

    def _after_previous(self) -> None:
        """Clean up after a daemon that died with its supervisor (a ledger whose writer is gone).

        Its instances may still run here while nobody holds their keys: they
        are stopped before the new daemon starts, as if its supervisor had
        lived (`after_death` leaves alone the ledger of a daemon that runs).
        """
        try:
            ledger = read_ledger(ledger_file(self.config, self.node))
        except LedgerError:
            ledger = None  # after_death says so in one sentence below
        else:
            if ledger is None:
                return
        log.info("a ledger of an earlier host daemon %s is here: cleaning up after it", self.node)
        cleanup = self._cleanup or (lambda c, n, p: asyncio.run(after_death(c, n, p)))
        try:
            with _reaping():
                cleanup(self.config, self.node, ledger.pid if ledger is not None else None)
        except Exception:
            log_bug(log, "the supervisor's cleanup")

    def run(self) -> int:
        """Supervise until asked to stop; returns the exit status for the supervisor."""
        if not become_subreaper():
            log.warning("cannot become the subreaper of the host daemon's descendants")
        signal.set_wakeup_fd(self._wake_w)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        # Orphans we adopted (a daemonized QEMU, a resource) are reaped as they exit: the
        # wake-up pipe ends the wait, which reaps them.
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        delays: Iterator[float] = self.backoff.delays()
        try:
            self._after_previous()
            while not self.stop_requested:
                started = time.monotonic()
                child = subprocess.Popen(
                    self.argv,
                    env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
                    stdin=subprocess.DEVNULL,
                    process_group=0,
                )
                self.child = child
                log.info("supervising host daemon %s, pid %d", self.node, child.pid)
                code = self._wait(child)
                death = Death(pid=child.pid, returncode=code, asked=bool(self.stop_requested))
                (log.info if death.clean else log.warning)("%s", death.describe())
                self._after(death)
                if self.stop_requested:
                    break
                if code == USAGE_EXIT:
                    log.error("host daemon %s refused its command line; not restarting", self.node)
                    return USAGE_EXIT
                if time.monotonic() - started >= STEADY_AFTER:
                    delays = self.backoff.delays()
                delay = next(delays)
                log.info("restarting host daemon %s in %.1f s", self.node, delay)
                self._sleep(delay)
            return 0
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)


def child_argv(argv: Sequence[str]) -> list[str]:
    """The daemon's own command line: this one (`servergroup ARGS`) without `--supervised`."""
    return [sys.executable, "-m", "servergroup", *(a for a in argv if a != SUPERVISED_OPTION)]


def supervise(config: Config, node: str, argv: Sequence[str]) -> int:
    """Run `servergroup ARGV` (ARGV without `--supervised`) under a `Supervisor`."""
    return Supervisor(child_argv(argv), config=config, node=node).run()


__all__ = [
    "CHILD_STOP_TIMEOUT",
    "SUPERVISED_OPTION",
    "SUPERVISOR_ENV",
    "Death",
    "Supervisor",
    "after_death",
    "child_argv",
    "is_host_daemon",
    "kill_agent_actions",
    "ledger_file",
    "store_endpoints",
    "supervise",
    "unit_processes",
]

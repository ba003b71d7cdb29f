"""The managed local etcd: the store servergroup uses when no endpoint is configured.

Theory of operation: one single-member etcd on loopback, data under
`<state_dir>/etcd/data`, log in `<state_dir>/etcd/etcd.log`, tuned so the
smallest lease is 1 s. It is shared by every servergroup command on this
machine, so `ensure_running` starts it detached (its own session, no tie to
the command that started it) and later commands reuse it.

Invariants:

- At most one local etcd per state directory: start, reuse and stop happen
  under an exclusive lock on `<state_dir>/etcd/lock`.
- "Our" etcd is a live process whose command line is an etcd with our data
  directory. The pid in `state.json` is only a hint, checked against
  `/proc/PID/cmdline` before it is trusted; a process that fails the check is
  never signalled, and a stale state file is ignored and replaced.
- Stopping (`common.process.stop_process`) opens a pidfd and then checks
  that it still names the process whose command line was checked (same
  start time), so no signal reaches a process that reused the pid.
- Every fault the operator can fix (etcd missing, a port taken by another
  program, an unusable state directory, etcd refusing to start) is one
  `ServergroupError` sentence.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from servergroup.common.errors import ConfigError, LocalError, ProcessFailed, UsageError
from servergroup.common.process import ProcessIdentity, command_line, stop_process
from servergroup.config import Config, Endpoint
from servergroup.coordination.etcd_process import (
    Compaction,
    CompactionMode,
    EtcdMemberSpec,
    EtcdProcess,
    find_etcd_binary,
    is_healthy,
    port_in_use,
)

#: The member name of the managed etcd.
LOCAL_MEMBER_NAME = "servergroup"
#: The managed etcd's history is bounded by time, not by a revision count.
#: Every broadcast is a put to its group's key, so the history grows with each
#: message; what the history is for is letting a watcher that was away (a host
#: whose etcd connection dropped, a lab host cut off for a while) resume from
#: its last revision without a gap. A time window promises that for any outage
#: shorter than it, whatever the message rate; a revision count would shrink
#: that promise to seconds under a burst of broadcasts. A watcher away longer
#: gets `WatchCompacted` and re-lists.
LOCAL_COMPACTION = Compaction(mode=CompactionMode.PERIODIC, retention="5m")
#: What bounds the space when the rate is high: 5 minutes of 1 KiB broadcasts at
#: 1000/s is about 300 MiB of history. Past the quota etcd raises its NOSPACE
#: alarm and refuses writes, which our coordinator reports as `StoreFull`, one
#: sentence that says how to recover; etcd's default quota is 2 GiB.
LOCAL_QUOTA_BACKEND_BYTES = 1 << 30
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_LOCK_TIMEOUT_MARGIN = 5.0
_POLL_INTERVAL = 0.05

# Local etcds started by this process, kept so that they are reaped here
# (no zombie) and so that their Popen objects are not collected while running.
_DETACHED: dict[int, EtcdProcess] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEtcdStatus:
    """Where the managed local etcd is and whether it runs."""

    running: bool
    healthy: bool
    pid: int | None
    endpoint: Endpoint
    data_dir: Path
    log_path: Path
    started_at: float | None  # wall-clock seconds, for display only

    def describe(self) -> str:
        """One sentence for people."""
        if not self.running:
            return (
                f"the local etcd is not running (it would listen on {self.endpoint}, "
                f"data in {self.data_dir})."
            )
        health = "healthy" if self.healthy else "NOT answering health checks"
        return (
            f"the local etcd is running at {self.endpoint}, {health} "
            f"(pid {self.pid}, data in {self.data_dir}, log in {self.log_path})."
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of the same facts."""
        return {
            "running": self.running,
            "healthy": self.healthy,
            "pid": self.pid,
            "endpoint": str(self.endpoint),
            "data_dir": str(self.data_dir),
            "log_path": str(self.log_path),
            "started_at": self.started_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class _StateRecord:
    pid: int
    endpoint: str
    started_at: float
    log_path: str
    data_dir: str
    foreground: bool


class LocalEtcd:
    """The managed single-member etcd of one state directory."""

    def __init__(self, config: Config) -> None:
        self._settings = config.etcd
        self.base_dir = Path(os.path.abspath(config.state_dir)) / "etcd"
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "etcd.log"
        self.state_path = self.base_dir / "state.json"
        self.lock_path = self.base_dir / "lock"
        self.endpoint = Endpoint(host=self._settings.host, port=self._settings.client_port)
        self.spec = EtcdMemberSpec(
            name=LOCAL_MEMBER_NAME,
            data_dir=self.data_dir,
            host=self._settings.host,
            client_port=self._settings.client_port,
            peer_port=self._settings.peer_port,
            tuned=True,
            binary=self._settings.binary,
            compaction=LOCAL_COMPACTION,
            quota_backend_bytes=LOCAL_QUOTA_BACKEND_BYTES,
        )

    # -- public API --------------------------------------------------------

    def status(self) -> LocalEtcdStatus:
        """Where the local etcd is; never starts or changes anything."""
        pid = self._find_pid()
        endpoint = self.endpoint
        started_at: float | None = None
        if pid is not None:
            endpoint = _running_endpoint(pid) or endpoint
            record = self._read_state()
            if record is not None and record.pid == pid:
                started_at = record.started_at
        return LocalEtcdStatus(
            running=pid is not None,
            healthy=pid is not None and is_healthy(endpoint),
            pid=pid,
            endpoint=endpoint,
            data_dir=self.data_dir,
            log_path=self.log_path,
            started_at=started_at,
        )

    def running(self) -> tuple[int, Endpoint] | None:
        """The pid and client endpoint of the running local etcd, or None; no health check.

        For callers that must not wait on an etcd that hangs (`image send`
        choosing where to record a transfer): `status()` asks it for its health.
        """
        pid = self._find_pid()
        if pid is None:
            return None
        return pid, _running_endpoint(pid) or self.endpoint

    def ensure_running(self, *, serve_also: tuple[str, ...] = ()) -> Endpoint:
        """Reuse the local etcd if it runs, else start it detached; return its endpoint.

        `serve_also` names more local addresses it must serve clients on (a lab
        bridge's, so that lab hosts reach it); an etcd running without one of
        them is restarted with all of them (its data is kept).
        """
        with self._locked():
            pid = self._find_pid()
            if pid is not None:
                served = _served_hosts(pid)
                if set(serve_also) <= served:
                    return self._reuse(pid)
                serve_also = tuple(sorted(served | set(serve_also)))
                _terminate(pid, self.data_dir, 10.0)
                self._remove_state()
            self.check_can_start()
            spec = replace(
                self.spec, extra_client_hosts=tuple(h for h in serve_also if h != self.spec.host)
            )
            proc = EtcdProcess(spec, log_path=self.log_path, label="the local etcd")
            self._start(proc)
            assert proc.pid is not None
            _DETACHED[proc.pid] = proc
            self._write_state(proc.pid, foreground=False)
            return self.endpoint

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the local etcd if it runs; return the pid it had, or None if none ran."""
        if not self.base_dir.is_dir():
            return None
        with self._locked():
            pid = self._find_pid()
            if pid is not None:
                _terminate(pid, self.data_dir, timeout)
            self._remove_state()
            return pid

    def run_foreground(
        self,
        *,
        echo: TextIO | None = None,
        on_ready: Callable[[LocalEtcdStatus], None] | None = None,
    ) -> int:
        """Run the local etcd as our child until it exits or we get SIGINT/SIGTERM.

        The first SIGINT/SIGTERM is passed on as SIGTERM (etcd shuts down
        cleanly), a second one as SIGKILL. Returns 0 after a clean shutdown
        (etcd stopped by SIGTERM or SIGINT, from us or from `stop()`), else
        etcd's exit status (128 + signal when killed). Must run in the main
        thread (it installs signal handlers).
        """
        proc = EtcdProcess(self.spec, log_path=self.log_path, echo=echo, label="the local etcd")
        signals_seen = 0

        def forward(signum: int, frame: FrameType | None) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if proc.running:
                proc.thaw()
                proc.send_signal(signal.SIGTERM if signals_seen == 1 else signal.SIGKILL)

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, forward)
        try:
            with self._locked():
                pid = self._find_pid()
                if pid is not None:
                    raise UsageError(
                        f"the local etcd is already running (pid {pid}) at "
                        f"{_running_endpoint(pid) or self.endpoint}; stop it first with "
                        "'servergroup etcd --stop'."
                    )
                self.check_can_start()
                try:
                    self._start(proc)
                except ProcessFailed:
                    if signals_seen:
                        return 0
                    raise
                assert proc.pid is not None
                self._write_state(proc.pid, foreground=True)
            if on_ready is not None:
                on_ready(self.status())
            returncode = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.running:
                proc.kill()
            record = self._read_state()
            if record is not None and record.pid == proc.pid:
                self._remove_state()
        # etcd shuts down cleanly on SIGTERM/SIGINT (ours or anyone's, such as
        # `servergroup etcd --stop`) and then dies of that signal.
        if returncode in (0, -signal.SIGTERM, -signal.SIGINT):
            return 0
        return 128 - returncode if returncode < 0 else returncode

    # -- finding our process -----------------------------------------------

    def _find_pid(self) -> int | None:
        record = self._read_state()
        if record is not None and _is_our_etcd(record.pid, self.data_dir):
            return record.pid
        # The state file can be stale or gone while our etcd still runs (it is
        # written after the start); the data directory identifies it anyway.
        for pid in _etcd_pids():
            if _is_our_etcd(pid, self.data_dir):
                return pid
        return None

    def _reuse(self, pid: int) -> Endpoint:
        endpoint = _running_endpoint(pid) or self.endpoint
        if endpoint != self.endpoint:
            raise ConfigError(
                f"the local etcd (pid {pid}) runs at {endpoint}, not at the configured "
                f"{self.endpoint}; stop it with 'servergroup etcd --stop' or use its port."
            )
        deadline = time.monotonic() + self._settings.start_timeout
        while not is_healthy(endpoint):
            if not _is_our_etcd(pid, self.data_dir):
                raise ProcessFailed(
                    f"the local etcd (pid {pid}) exited while we waited for it (log: "
                    f"{self.log_path})."
                )
            if time.monotonic() >= deadline:
                raise ProcessFailed(
                    f"the local etcd (pid {pid}) runs but does not answer at {endpoint} "
                    f"within {self._settings.start_timeout:g} s; stop it with "
                    f"'servergroup etcd --stop' (log: {self.log_path})."
                )
            time.sleep(_POLL_INTERVAL)
        return endpoint

    # -- starting ----------------------------------------------------------

    def check_can_start(self) -> None:
        """Raise what would stop it from starting (no binary, a port taken by another program)."""
        find_etcd_binary(self._settings.binary)
        for port, setting, env in (
            (self._settings.client_port, "client_port", "SERVERGROUP_ETCD_PORT"),
            (self._settings.peer_port, "peer_port", "SERVERGROUP_ETCD_PEER_PORT"),
        ):
            try:
                taken = port_in_use(self._settings.host, port)
            except OSError as exc:
                raise ConfigError(
                    f"the local etcd cannot listen on {self._settings.host}:{port}: "
                    f"{exc.strerror}; check etcd.host."
                ) from None
            if taken:
                raise ConfigError(
                    f"port {port} on {self._settings.host} is in use by another program, not "
                    f"by servergroup's etcd; free it or choose another port with {env} "
                    f"(etcd.{setting})."
                )

    def _start(self, proc: EtcdProcess) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        try:
            proc.start()
        except OSError as exc:
            raise self._dir_error(exc) from None
        try:
            proc.wait_healthy(self._settings.start_timeout)
        except BaseException:
            proc.kill()
            raise

    # -- the state directory -----------------------------------------------

    def _dir_error(self, exc: OSError) -> ConfigError:
        where = exc.filename or self.base_dir
        return ConfigError(
            f"the state directory {self.base_dir.parent} is not usable ({where}: "
            f"{exc.strerror}); choose another with --state-dir or SERVERGROUP_STATE_DIR."
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._dir_error(exc) from None
        try:
            deadline = time.monotonic() + self._settings.start_timeout + _LOCK_TIMEOUT_MARGIN
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ProcessFailed(
                            f"another servergroup command holds {self.lock_path} for too long; "
                            "try again."
                        ) from None
                    time.sleep(_POLL_INTERVAL)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read_state(self) -> _StateRecord | None:
        try:
            data = json.loads(self.state_path.read_text())
            return _StateRecord(
                pid=int(data["pid"]),
                endpoint=str(data["endpoint"]),
                started_at=float(data["started_at"]),
                log_path=str(data["log_path"]),
                data_dir=str(data["data_dir"]),
                foreground=bool(data.get("foreground", False)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: /proc decides instead

    def _write_state(self, pid: int, *, foreground: bool) -> None:
        record = {
            "pid": pid,
            "endpoint": str(self.endpoint),
            "started_at": time.time(),
            "log_path": str(self.log_path),
            "data_dir": str(self.data_dir),
            "foreground": foreground,
        }
        tmp = self.state_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            tmp.replace(self.state_path)
        except OSError as exc:
            raise self._dir_error(exc) from None

    def _remove_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()


class LocalEtcdNotRunning(LocalError):
    """A read found no etcd: none configured, and the managed local one is not running."""


def resolve_endpoints(config: Config, *, start: bool = True) -> tuple[Endpoint, ...]:
    """The etcd endpoints to use: the configured ones, else the local etcd's.

    The local etcd is started if needed, unless `start` is false (a command
    that only reads): then `LocalEtcdNotRunning` says how to start it, so
    that looking does not leave a daemon running behind.
    """
    if config.coordination.endpoints:
        return config.coordination.endpoints
    local = LocalEtcd(config)
    if start:
        return (local.ensure_running(),)
    found = local.running()
    if found is None:
        raise LocalEtcdNotRunning(
            "the local etcd is not running and no etcd endpoint is configured: start it with "
            "`servergroup up` (or `servergroup etcd --start`), or configure your etcd's endpoints"
        )
    return (found[1],)


# -- /proc helpers -----------------------------------------------------------


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def _is_our_etcd(pid: int, data_dir: Path) -> bool:
    """True when `pid` is a live etcd whose data directory is `data_dir`."""
    return _our_etcd(pid, data_dir) is not None


def _our_etcd(pid: int, data_dir: Path) -> ProcessIdentity | None:
    """The identity of `pid` if it is a live etcd whose data directory is `data_dir`."""

    def is_ours(argv: list[str]) -> bool:
        return (
            bool(argv)
            and "etcd" in os.path.basename(argv[0])
            and (_option(argv, "--data-dir") == str(data_dir))
        )

    return ProcessIdentity.of(pid, argv_check=is_ours)


def _etcd_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if "etcd" in Path(f"/proc/{entry}/comm").read_text():
                    yield int(entry)


def _served_hosts(pid: int) -> set[str]:
    """The hosts a running etcd serves clients on (from its command line)."""
    argv = command_line(pid)
    urls = _option(argv, "--listen-client-urls") if argv else None
    hosts: set[str] = set()
    for url in (urls or "").split(","):
        try:
            hosts.add(Endpoint.parse(url).host)
        except ConfigError:
            continue
    return hosts


def _running_endpoint(pid: int) -> Endpoint | None:
    argv = command_line(pid)
    urls = _option(argv, "--advertise-client-urls") if argv else None
    if not urls:
        return None
    try:
        return Endpoint.parse(urls.split(",")[0])
    except ConfigError:
        return None


def _terminate(pid: int, data_dir: Path, timeout: float) -> None:
    """SIGTERM our etcd `pid`, SIGKILL after `timeout`; never signals another process."""
    proc = _DETACHED.pop(pid, None)
    if proc is not None:  # started by this very process: it is our child
        proc.stop(timeout)
        return
    identity = _our_etcd(pid, data_dir)
    if identity is None:
        return
    # A pidfd opened before its identity is checked again: never signals a reused PID.
    stop_process(identity, term_timeout=timeout)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child after all


__all__ = [
    "LOCAL_MEMBER_NAME",
    "LocalEtcd",
    "LocalEtcdNotRunning",
    "LocalEtcdStatus",
    "resolve_endpoints",
]

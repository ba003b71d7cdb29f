"""Running etcd members as child processes: one member, or an N-member cluster on loopback.

Theory of operation: an `EtcdMemberSpec` says everything about one member
(name, data directory, ports, the initial cluster it belongs to, whether it
runs with the tuned timings). `etcd_argv` turns a spec into the command line,
and `EtcdProcess` runs it: its own session (so a Ctrl-C meant for us never
reaches it, and it can outlive us when asked to), output appended to a log
file, readiness judged by etcd's own `/health` answer on the client URL.
Every wait is bounded; when a start fails, the error carries the last
meaningful line of etcd's log, because that line nearly always says why.

The same code serves the managed local etcd (`local_etcd`) and the test
fixtures, so the tests run etcd exactly as the product does. The fault
helpers (`kill`, `freeze`, `thaw`, `restart`) exist for the fault tests:
SIGKILL for a crash, SIGSTOP for a member that hangs (as Patroni's feature
tests do), restart from the same data directory to rejoin.

With `tls` in the spec, the member serves clients and peers over TLS
(`https://` URLs) and demands a certificate signed by the trusted CA from
both (`--client-cert-auth`, `--peer-client-cert-auth`); the readiness and
status probes then show the member's own certificate, which is valid for
client authentication too (see `coordination.certs`). A `launcher` wraps the
command line, e.g. to start the member inside a lab host's network namespace.

Tuned timings (`--heartbeat-interval 50 --election-timeout 500`) make etcd's
smallest lease 1 s (`ceil(1.5 * election timeout)`, see REFERENCE.md).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any, TextIO

from servergroup.common.errors import MissingDependency, ProcessFailed, UsageError
from servergroup.common.process import stop_process, wait_stopped
from servergroup.config import Endpoint

#: Raft heartbeat interval of the tuned timings, in seconds.
TUNED_HEARTBEAT_INTERVAL = 0.05
#: Raft election timeout of the tuned timings, in seconds (smallest lease: 1 s).
TUNED_ELECTION_TIMEOUT = 0.5
#: The Debian package that provides the etcd server binary.
ETCD_PACKAGE = "etcd-server"

_POLL_INTERVAL = 0.05
_REQUEST_TIMEOUT = 0.5
_LOG_TAIL_BYTES = 16384
# capnslog lines (etcd < 3.5 prints a few even with --logger zap):
# "2026-01-02 03:04:05.678901 W | pkg/fileutil: message".
_CAPNSLOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? [A-Z] \| ")


class CompactionMode(Enum):
    """How etcd reads `--auto-compaction-retention`."""

    PERIODIC = "periodic"  # a duration ("5m"): keep at least that much history
    REVISION = "revision"  # a count: keep the last N revisions


@dataclass(frozen=True, slots=True, kw_only=True)
class Compaction:
    """etcd's auto-compaction: `mode` and `retention` ("5m" or a revision count)."""

    mode: CompactionMode
    retention: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberTls:
    """A member's TLS: its certificate (for clients and peers alike) and the CA it trusts."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def context(self) -> ssl.SSLContext:
        """A client context for probing the member: trusts the CA, shows the member's cert."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdMemberSpec:
    """Everything about one etcd member; `initial_cluster` empty means a single member."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    host: str = "127.0.0.1"
    #: (name, peer URL) of every member of the initial cluster, this one included.
    initial_cluster: tuple[tuple[str, str], ...] = ()
    cluster_token: str = "servergroup"
    #: Run with `--heartbeat-interval 50 --election-timeout 500` (1 s minimum lease).
    tuned: bool = True
    binary: str = "etcd"
    #: More addresses to serve clients on, at the same port (e.g. a lab bridge).
    extra_client_hosts: tuple[str, ...] = ()
    #: Auto-compaction (`--auto-compaction-mode/-retention`); None: etcd's default, none.
    compaction: Compaction | None = None
    #: Raise the NOSPACE alarm past this database size (`--quota-backend-bytes`);
    #: None: etcd's default (2 GiB).
    quota_backend_bytes: int | None = None
    #: TLS for clients and peers, with client certificates required; None: plain http.
    tls: MemberTls | None = None

    @property
    def endpoint(self) -> Endpoint:
        """Where clients reach this member."""
        return Endpoint(host=self.host, port=self.client_port, secure=self.tls is not None)

    @property
    def client_url(self) -> str:
        return str(self.endpoint)

    @property
    def client_urls(self) -> tuple[str, ...]:
        """Every URL clients reach this member at: `client_url` first."""
        secure = self.tls is not None
        extra = (
            str(Endpoint(host=h, port=self.client_port, secure=secure))
            for h in self.extra_client_hosts
        )
        return (self.client_url, *extra)

    @property
    def peer_url(self) -> str:
        return str(Endpoint(host=self.host, port=self.peer_port, secure=self.tls is not None))

    def ssl_context(self) -> ssl.SSLContext | None:
        """How to probe this member over TLS; None when it speaks plain http."""
        return self.tls.context() if self.tls is not None else None


def etcd_argv(spec: EtcdMemberSpec, binary: str | None = None) -> list[str]:
    """The etcd command line for `spec` (`binary` overrides `spec.binary`)."""
    cluster = spec.initial_cluster or ((spec.name, spec.peer_url),)
    argv = [
        binary or spec.binary,
        "--name",
        spec.name,
        "--data-dir",
        str(spec.data_dir),
        "--listen-client-urls",
        ",".join(spec.client_urls),
        "--advertise-client-urls",
        ",".join(spec.client_urls),
        "--listen-peer-urls",
        spec.peer_url,
        "--initial-advertise-peer-urls",
        spec.peer_url,
        "--initial-cluster",
        ",".join(f"{name}={url}" for name, url in cluster),
        "--initial-cluster-token",
        spec.cluster_token,
        "--initial-cluster-state",
        "new",
        # zap logs one JSON object per line, the only logger etcd 3.5+ has.
        "--logger",
        "zap",
    ]
    if spec.tuned:
        argv += [
            "--heartbeat-interval",
            str(round(TUNED_HEARTBEAT_INTERVAL * 1000)),
            "--election-timeout",
            str(round(TUNED_ELECTION_TIMEOUT * 1000)),
        ]
    if spec.compaction is not None:
        argv += [
            "--auto-compaction-mode",
            spec.compaction.mode.value,
            "--auto-compaction-retention",
            spec.compaction.retention,
        ]
    if spec.quota_backend_bytes is not None:
        argv += ["--quota-backend-bytes", str(spec.quota_backend_bytes)]
    if spec.tls is not None:
        tls = spec.tls
        argv += [
            "--cert-file",
            str(tls.cert_file),
            "--key-file",
            str(tls.key_file),
            "--trusted-ca-file",
            str(tls.ca_file),
            "--client-cert-auth",
            "--peer-cert-file",
            str(tls.cert_file),
            "--peer-key-file",
            str(tls.key_file),
            "--peer-trusted-ca-file",
            str(tls.ca_file),
            "--peer-client-cert-auth",
        ]
    return argv


def find_etcd_binary(binary: str = "etcd") -> str:
    """The full path of the etcd server binary; `MissingDependency` when it is not installed."""
    found = shutil.which(binary)
    if found is None:
        raise MissingDependency(
            f"etcd is not installed ({binary!r} is not on PATH); "
            f"install the Debian package {ETCD_PACKAGE}."
        )
    return found


def free_ports(count: int = 1, host: str = "127.0.0.1") -> tuple[int, ...]:
    """`count` distinct TCP ports that are free on `host` right now (the kernel picks them)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return tuple(sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on (host, port), so etcd could not bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # etcd (Go) binds with SO_REUSEADDR too, so a port held only by
        # TIME_WAIT connections counts as free, as it does for etcd.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _http_json(
    url: str, *, body: bytes | None, timeout: float, context: ssl.SSLContext | None = None
) -> Any:
    # Here, not at the top: urllib (and http, email) loads only when a member is asked.
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read())


def is_healthy(
    endpoint: Endpoint, timeout: float = _REQUEST_TIMEOUT, context: ssl.SSLContext | None = None
) -> bool:
    """True when the member at `endpoint` answers `/health` with `"health": "true"`.

    etcd says healthy only when the member sees a leader and has no alarm.
    `context`: the TLS trust and client certificate for an `https://` member.
    """
    try:
        answer = _http_json(f"{endpoint}/health", body=None, timeout=timeout, context=context)
    except (OSError, ValueError):  # refused, timed out, HTTP error, not JSON
        return False
    return isinstance(answer, dict) and answer.get("health") == "true"


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdMemberStatus:
    """What one member says about itself (etcd's Maintenance.Status)."""

    member_id: int
    leader_id: int
    raft_term: int
    version: str

    @property
    def is_leader(self) -> bool:
        return self.leader_id != 0 and self.leader_id == self.member_id


def member_status(
    endpoint: Endpoint, timeout: float = _REQUEST_TIMEOUT, context: ssl.SSLContext | None = None
) -> EtcdMemberStatus | None:
    """Ask one member for its status through the JSON gateway; None when it does not answer."""
    try:
        answer = _http_json(
            f"{endpoint}/v3/maintenance/status", body=b"{}", timeout=timeout, context=context
        )
        return EtcdMemberStatus(
            member_id=int(answer["header"]["member_id"]),
            leader_id=int(answer.get("leader", 0)),
            raft_term=int(answer.get("raftTerm", 0)),
            version=str(answer.get("version", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize_log_line(line: str) -> str:
    """One etcd log line made readable: a zap JSON line becomes `msg: error`."""
    text = line.strip()
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            return text
        if isinstance(entry, dict):
            message = str(entry.get("msg", "")).strip()
            error = str(entry.get("error", "")).strip()
            return f"{message}: {error}" if message and error else message or error or text
    return _CAPNSLOG_PREFIX.sub("", text)


def last_log_line(log_path: Path) -> str:
    """The line of an etcd log that best says why it stopped, or "" when there is none.

    Preference: the last fatal/panic JSON entry, then a Go `panic:` line, then
    the last non-empty line.
    """
    try:
        with log_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("{") and re.search(r'"level":\s*"(fatal|panic|dpanic)"', line):
            return summarize_log_line(line)
    for line in reversed(lines):
        if line.startswith("panic:"):
            return line.strip()
    return summarize_log_line(lines[-1]) if lines else ""


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class EtcdProcess:
    """One etcd member running as a child process in its own session.

    Output goes to `log_path` (appended across restarts); with `echo`, each
    line is also copied to that stream (for `servergroup etcd` in the
    foreground). `launcher` turns etcd's command line into the one to run
    (e.g. `Lab.command`, inside a lab host); it must exec etcd, not fork it.
    """

    def __init__(
        self,
        spec: EtcdMemberSpec,
        *,
        log_path: Path | None = None,
        echo: TextIO | None = None,
        label: str | None = None,
        launcher: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.spec = spec
        self._launcher = launcher
        self._context = spec.ssl_context()
        #: How errors name this member, e.g. "the local etcd".
        self.label = label if label is not None else f"etcd member {spec.name}"
        self.log_path = log_path if log_path is not None else spec.data_dir.with_suffix(".log")
        self._echo = echo
        self._proc: subprocess.Popen[bytes] | None = None
        self._tee: threading.Thread | None = None
        self._frozen = False
        self._member_id: int | None = None

    def __repr__(self) -> str:
        return f"<EtcdProcess {self.name} pid={self.pid} {self.spec.client_url}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def endpoint(self) -> Endpoint:
        return self.spec.endpoint

    @property
    def pid(self) -> int | None:
        """The process id of the latest start, or None before the first start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited (negative: killed by that signal), else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def frozen(self) -> bool:
        return self._frozen and self.running

    @property
    def member_id(self) -> int | None:
        """etcd's id of this member, once it has answered `status()` (stable across restarts)."""
        return self._member_id

    def status(self, timeout: float = _REQUEST_TIMEOUT) -> EtcdMemberStatus | None:
        """What the member says about itself; None when it is down, frozen or silent."""
        if not self.running or self._frozen:
            return None
        status = member_status(self.endpoint, timeout, self._context)
        if status is not None:
            self._member_id = status.member_id
        return status

    def start(self) -> None:
        """Start the member; returns at once (see `wait_healthy`).

        Raises `MissingDependency` without etcd, `ProcessFailed` when it cannot
        be executed, and `OSError` when its directories cannot be created.
        """
        if self.running:
            raise UsageError(f"{self.label} is already running (pid {self.pid}).")
        binary = find_etcd_binary(self.spec.binary)
        self.spec.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                argv = etcd_argv(self.spec, binary)
                self._proc = subprocess.Popen(
                    self._launcher(argv) if self._launcher is not None else argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log if self._echo is None else subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProcessFailed(
                    f"{self.label} could not be started ({binary}: {exc.strerror})."
                ) from None
        self._frozen = False
        if self._echo is not None:
            assert self._proc.stdout is not None
            self._tee = threading.Thread(
                target=_tee_lines,
                args=(self._proc.stdout, self.log_path, self._echo),
                name=f"etcd-{self.name}-log",
                daemon=True,
            )
            self._tee.start()

    def wait_healthy(self, timeout: float) -> None:
        """Wait until the member reports healthy; `ProcessFailed` if it dies or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None:
                raise UsageError(f"{self.label} was never started.")
            returncode = self._proc.poll()
            if returncode is not None:
                raise ProcessFailed(self._failure(f"{_describe_exit(returncode)} while starting"))
            if not self._frozen and is_healthy(self.endpoint, context=self._context):
                return
            if time.monotonic() >= deadline:
                raise ProcessFailed(
                    self._failure(f"did not become healthy at {self.endpoint} within {timeout:g} s")
                )
            time.sleep(_POLL_INTERVAL)

    def _failure(self, what: str) -> str:
        line = last_log_line(self.log_path)
        why = f"; its log ends with: {line}" if line else ""
        return f"{self.label} {what}{why} (log: {self.log_path})."

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the process exits and return its exit status."""
        if self._proc is None:
            raise UsageError(f"{self.label} was never started.")
        returncode = self._proc.wait(timeout)
        if self._tee is not None:
            self._tee.join(timeout=1.0)
        return returncode

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the member if it still runs."""
        # Popen.send_signal does nothing once the child has been reaped, so a
        # recycled pid is never signalled.
        if self._proc is not None:
            self._proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit status."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:  # our child, not yet reaped: its PID is still its own
            stop_process(self._proc.pid, term_timeout=timeout)
        self._frozen = False
        return self.wait(5.0)

    def kill(self) -> None:
        """SIGKILL (a crash, as far as the cluster can tell) and reap it."""
        if self._proc is not None and self._proc.poll() is None:
            self.send_signal(signal.SIGKILL)
        if self._proc is not None:
            self.wait(5.0)
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the member hangs without closing a connection; returns once it is stopped."""
        if self._proc is not None and self.running:
            self.send_signal(signal.SIGSTOP)
            self._frozen = True
            wait_stopped(self._proc.pid)

    def thaw(self) -> None:
        """SIGCONT: undo `freeze`."""
        if self.running:
            self.send_signal(signal.SIGCONT)
        self._frozen = False

    def restart(self, *, timeout: float = 10.0, wait: bool = True) -> None:
        """Stop if running, start again from the same data directory (rejoining its cluster).

        With `wait`, return once it is healthy, which needs a quorum of the
        cluster to be up.
        """
        if self.running:
            self.stop()
        self.start()
        if wait:
            self.wait_healthy(timeout)


def _tee_lines(source: IO[bytes], log_path: Path, echo: TextIO) -> None:
    with log_path.open("ab") as log:
        for line in iter(source.readline, b""):
            log.write(line)
            log.flush()
            with contextlib.suppress(OSError, ValueError):  # the echo stream closed
                echo.write(line.decode("utf-8", "replace"))
                echo.flush()


class EtcdCluster:
    """A set of `EtcdProcess` members forming one etcd cluster (one member is fine)."""

    def __init__(self, members: Sequence[EtcdProcess]) -> None:
        if not members:
            raise UsageError("an etcd cluster needs at least one member.")
        self.members: tuple[EtcdProcess, ...] = tuple(members)

    def __repr__(self) -> str:
        return f"<EtcdCluster {', '.join(m.name for m in self.members)}>"

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The client endpoints of every member, in member order."""
        return tuple(m.endpoint for m in self.members)

    def member(self, name: str) -> EtcdProcess:
        """The member called `name`."""
        for m in self.members:
            if m.name == name:
                return m
        raise UsageError(f"no etcd member is called {name!r}.")

    def start(self, timeout: float = 20.0) -> None:
        """Start every member at once (they need each other to elect a leader), wait healthy."""
        try:
            for m in self.members:
                m.start()
            self.wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise

    def wait_healthy(self, timeout: float = 10.0) -> None:
        """Wait until every running, unfrozen member reports healthy."""
        deadline = time.monotonic() + timeout
        for m in self.members:
            if m.running and not m.frozen:
                m.wait_healthy(max(0.0, deadline - time.monotonic()))

    def leader(self, timeout: float = 5.0) -> EtcdProcess:
        """The member a majority of the cluster names as leader, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        majority = len(self.members) // 2 + 1
        while True:
            votes: dict[int, int] = {}
            for m in self.members:
                status = m.status()
                if status is None:
                    continue
                if status.leader_id:
                    votes[status.leader_id] = votes.get(status.leader_id, 0) + 1
            for leader_id, count in votes.items():
                if count < majority:
                    continue
                for m in self.members:
                    if m.member_id == leader_id and m.running and not m.frozen:
                        return m
            if time.monotonic() >= deadline:
                raise ProcessFailed(f"no etcd leader elected among {self!r} within {timeout:g} s.")
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM every member at once, SIGKILL whatever still runs after `timeout`.

        A leader that stops tries to hand leadership to a follower first; when
        the followers are stopping too, that hand-over can only time out, so
        the deadline is short.
        """
        for m in self.members:
            m.thaw()
            if m.running:
                m.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for m in self.members:
            m.stop(max(0.0, deadline - time.monotonic()))

    def kill(self) -> None:
        """SIGKILL every member (thawing frozen ones first) and reap them."""
        for m in self.members:
            m.thaw()
            m.kill()


def cluster_specs(
    base_dir: Path,
    size: int = 3,
    *,
    host: str = "127.0.0.1",
    name_prefix: str = "etcd",
    tuned: bool = True,
    binary: str = "etcd",
    ports: Iterable[int] | None = None,
) -> tuple[EtcdMemberSpec, ...]:
    """Specs for a `size`-member cluster on `host`, data under `base_dir/<name>`.

    Ports are free ones unless given (client, peer, client, peer, ...).
    """
    if size < 1:
        raise UsageError("an etcd cluster needs at least one member.")
    port_list = list(ports) if ports is not None else list(free_ports(2 * size, host))
    if len(port_list) != 2 * size:
        raise UsageError(f"a {size}-member etcd cluster needs {2 * size} ports.")
    names = [f"{name_prefix}{i}" for i in range(size)]
    peer_host = f"[{host}]" if ":" in host else host
    initial = tuple(
        (name, f"http://{peer_host}:{port_list[2 * i + 1]}") for i, name in enumerate(names)
    )
    token = f"{name_prefix}-{os.getpid()}-{port_list[0]}"
    return tuple(
        EtcdMemberSpec(
            name=name,
            data_dir=base_dir / name,
            host=host,
            client_port=port_list[2 * i],
            peer_port=port_list[2 * i + 1],
            initial_cluster=initial,
            cluster_token=token,
            tuned=tuned,
            binary=binary,
        )
        for i, name in enumerate(names)
    )


def start_cluster(
    base_dir: Path,
    size: int = 3,
    *,
    timeout: float = 20.0,
    host: str = "127.0.0.1",
    name_prefix: str = "etcd",
    tuned: bool = True,
    binary: str = "etcd",
) -> EtcdCluster:
    """Start a `size`-member cluster on free ports under `base_dir` and wait until healthy."""
    specs = cluster_specs(
        base_dir, size, host=host, name_prefix=name_prefix, tuned=tuned, binary=binary
    )
    cluster = EtcdCluster(
        [EtcdProcess(spec, log_path=base_dir / f"{spec.name}.log") for spec in specs]
    )
    cluster.start(timeout)
    return cluster


__all__ = [
    "ETCD_PACKAGE",
    "TUNED_ELECTION_TIMEOUT",
    "TUNED_HEARTBEAT_INTERVAL",
    "Compaction",
    "CompactionMode",
    "EtcdCluster",
    "EtcdMemberSpec",
    "EtcdMemberStatus",
    "EtcdProcess",
    "MemberTls",
    "cluster_specs",
    "etcd_argv",
    "find_etcd_binary",
    "free_ports",
    "is_healthy",
    "last_log_line",
    "member_status",
    "port_in_use",
    "start_cluster",
    "summarize_log_line",
]

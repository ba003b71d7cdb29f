"""`servergroup up` / `down`: the whole single-machine setup, in the background.

`up(config, hosts=N)` makes, idempotently:

1. a lab of N hosts (`servergroup.lab`): network namespaces `<lab>-h<i>` on a
   bridge whose root-side address lab hosts use to reach etcd;
2. the managed local etcd, serving loopback and that bridge address; or,
   when etcd endpoints are configured, nothing: the hosts use that cluster
   (its members must be reachable from the lab hosts, so not on loopback;
   TLS settings and the config file are handed down to the host daemons);
3. one `servergroup host --supervised` per lab host, started detached inside
   the host's namespace, channel directory `<state>/up/hosts/h<i>/channels`,
   log `<state>/up/hosts/h<i>/host.log`: a supervisor (`daemons.supervisor`)
   whose child is the host daemon, and which, when that daemon dies, stops
   its service instances, revokes its lease and starts it again; it is ready
   when its daemon's record `registry/hosts/h<i>` appears in etcd (seen on a
   watch) with the pid of a child of the supervisor.

Calling it again with the same N changes nothing; with another N it adds or
removes hosts. What it made is written to `<state>/up/state.json`, so that
`down(config)` can remove every server, host daemon and namespace of it, and
stop the etcd if `up` started it. Processes are recognised by their command
line before they are signalled: we only ever end our own. `down` signals
the supervisor, which forwards the SIGTERM to its daemon and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from servergroup.common.errors import LocalError, ProcessFailed, ServergroupError
from servergroup.common.process import ProcessIdentity, alive, stop_process
from servergroup.config import Config, Endpoint
from servergroup.coordination import CoordinationError, LocalEtcd, connect
from servergroup.lab import Lab
from servergroup.servers.drivers.lab import LabDriver
from servergroup.servers.drivers.qemu.driver import remove_all as qemu_remove_all
from servergroup.servers.model import RegistrySnapshot, Server
from servergroup.servers.operations import Operations
from servergroup.servers.registry import BROADCASTS, GROUPS, Registry, RegistryCache

log = logging.getLogger(__name__)

DEFAULT_LAB = "sg"
HOST_READY_TIMEOUT = 30.0
#: A supervisor gives its daemon up to CHILD_STOP_TIMEOUT, then cleans up after it.
STOP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class UpHost:
    """One lab host and its host daemon (`pid`: its supervisor)."""

    name: str
    netns: str
    address: str
    pid: int
    channel_dir: str
    log_path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UpStatus:
    """Where everything of `servergroup up` is."""

    lab: str
    state_dir: str
    etcd: str  # the endpoint(s) on the root namespace (the managed etcd's: loopback)
    etcd_for_hosts: str  # the endpoint(s) lab hosts use (the same for a configured cluster)
    prefix: str
    started_etcd: bool
    hosts: tuple[UpHost, ...]

    @property
    def cluster(self) -> str | None:
        """The configured cluster's endpoints the hosts use; None with the managed etcd."""
        return self.etcd_for_hosts if self.etcd == self.etcd_for_hosts else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> list[str]:
        where = (
            f"the configured cluster {self.etcd}"
            if self.cluster is not None
            else f"{self.etcd} (lab hosts use {self.etcd_for_hosts})"
        )
        lines = [
            f"etcd: {where}, prefix {self.prefix}",
            f"lab: {self.lab} ({len(self.hosts)} host{'s' if len(self.hosts) != 1 else ''})",
        ]
        for h in self.hosts:
            lines.append(
                f"  {h.name}: netns {h.netns}, {h.address}, host daemon pid {h.pid}, "
                f"channels {h.channel_dir}, log {h.log_path}"
            )
        lines.append(f"state: {self.state_dir}")
        return lines


def up_dir(config: Config) -> Path:
    return Path(os.path.abspath(config.state_dir)) / "up"


def _state_path(config: Config) -> Path:
    return up_dir(config) / "state.json"


def read_status(config: Config) -> UpStatus | None:
    """What `up` recorded, or None when nothing is up."""
    try:
        raw = json.loads(_state_path(config).read_text())
        hosts = tuple(UpHost(**h) for h in raw.pop("hosts"))
        return UpStatus(hosts=hosts, **raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_status(config: Config, status: UpStatus) -> None:
    path = _state_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status.as_dict(), indent=2) + "\n")
    tmp.replace(path)


def _host_argv(
    config: Config,
    name: str,
    endpoints: tuple[Endpoint, ...],
    channel_dir: Path,
    address: str,
    config_path: Path | None = None,
) -> list[str]:
    given = ["--config", os.path.abspath(config_path)] if config_path is not None else []
    return [
        sys.executable,
        "-m",
        "servergroup",
        *given,
        "--state-dir",
        str(Path(os.path.abspath(config.state_dir))),
        "--endpoints",
        ",".join(str(e) for e in endpoints),
        "--prefix",
        config.coordination.prefix,
        "--log-json",
        "-v",
        "host",
        "--supervised",
        "--name",
        name,
        "--channel-dir",
        str(channel_dir),
        "--migration-address",
        address,
    ]


def _host_env(config: Config) -> dict[str, str]:
    """The host daemons' environment: ours, with the TLS settings of `config` made explicit.

    The managed etcd speaks plain http on the lab bridge's root address, which
    is not loopback but never leaves this machine, so it is allowed there.
    """
    coordination = config.coordination
    env = {k: v for k, v in os.environ.items() if k != "SERVERGROUP_ETCD_ENDPOINTS"}
    env["SERVERGROUP_ETCD_INSECURE"] = "1" if coordination.insecure or config.managed_etcd else "0"
    for var, value in (
        ("SERVERGROUP_ETCD_CA", coordination.ca_file),
        ("SERVERGROUP_ETCD_CERT", coordination.cert_file),
        ("SERVERGROUP_ETCD_KEY", coordination.key_file),
    ):
        env.pop(var, None)
        if value:
            env[var] = value
    return env


def _our_host_daemon(pid: int, config: Config, name: str) -> ProcessIdentity | None:
    """The identity of `pid` if it is our host daemon `name` (by its command line)."""
    state_dir = str(Path(os.path.abspath(config.state_dir)))

    def is_ours(words: list[str]) -> bool:
        return (
            "servergroup" in words
            and "host" in words
            and state_dir in words
            and any(words[i] == "--name" and words[i + 1] == name for i in range(len(words) - 1))
        )

    return ProcessIdentity.of(pid, argv_check=is_ours)


def _end(pid: int, config: Config, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM our host daemon `pid`, SIGKILL after `timeout`; never anyone else."""
    identity = _our_host_daemon(pid, config, name)
    if identity is not None:
        stop_process(identity, term_timeout=timeout)


def up(
    config: Config,
    *,
    hosts: int = 1,
    lab_name: str | None = None,
    progress: Callable[[str], None] | None = None,
    config_path: Path | None = None,
) -> UpStatus:
    """Bring the single-machine setup to `hosts` lab hosts, each with a host daemon.

    With etcd endpoints configured, the host daemons use that cluster and no
    local etcd is started; `config_path`, the file `config` was read from, is
    handed to the host daemons too.
    """
    say = progress or (lambda _msg: None)
    if hosts < 1:
        raise LocalError("servergroup up needs at least one host (--hosts 1 or more)")
    configured = config.coordination.endpoints
    for endpoint in configured:
        if endpoint.loopback:
            raise LocalError(
                f"etcd endpoint {endpoint} is on loopback, which the lab hosts cannot reach; "
                "configure the addresses the cluster's members serve on the network"
            )
    previous = read_status(config)
    if previous is not None and previous.cluster != (_joined(configured) if configured else None):
        raise LocalError(
            f"servergroup up is already up on etcd {previous.etcd_for_hosts} from this state "
            "directory; run `servergroup down` first to use another etcd"
        )
    name = lab_name or (previous.lab if previous is not None else DEFAULT_LAB)
    if previous is not None and previous.lab != name:
        raise LocalError(
            f"lab {previous.lab} is already up from this state directory; "
            "run `servergroup down` first to use another lab name"
        )
    base = up_dir(config)
    lab = Lab(name, state_dir=Path(os.path.abspath(config.state_dir)))
    # Hosts beyond the new count lose their daemons before their namespaces go.
    if previous is not None:
        for h in previous.hosts[hosts:]:
            say(f"stopping host daemon {h.name} (pid {h.pid})")
            _end(h.pid, config, h.name)
    local = None if configured else LocalEtcd(config)
    if local is not None and local.running() is None:
        local.check_can_start()  # a port in use fails here, before the lab is touched
    say(f"lab {name}: {hosts} host(s)")
    lab_status = lab.up(hosts)
    if local is None:
        endpoints = host_endpoints = configured
        started_etcd = False
        say(f"etcd: the configured cluster {_joined(configured)}")
    else:
        was_running = local.status().running
        root = str(lab_status.root_address)
        endpoint = local.ensure_running(serve_also=(root,))
        started_etcd = (previous.started_etcd if previous is not None else False) or not was_running
        endpoints = (endpoint,)
        host_endpoints = (Endpoint(host=root, port=endpoint.port),)
        say(f"etcd: {endpoint} (lab hosts use {host_endpoints[0]})")
    env = _host_env(config)
    known = {h.name: h for h in previous.hosts} if previous is not None else {}
    result: list[UpHost] = []
    for lab_host in lab_status.hosts:
        hdir = base / "hosts" / lab_host.name
        channel_dir = hdir / "channels"
        channel_dir.mkdir(parents=True, exist_ok=True)
        log_path = hdir / "host.log"
        old = known.get(lab_host.name)
        if old is not None and _our_host_daemon(old.pid, config, lab_host.name) is not None:
            pid = old.pid
        else:
            say(f"starting host daemon {lab_host.name}")
            with open(log_path, "ab") as out:
                # As `servergroup lab exec` runs it: the host's network namespace
                # only, so the lab driver finds the machine's cgroup mounts.
                argv = _host_argv(
                    config,
                    lab_host.name,
                    host_endpoints,
                    channel_dir,
                    str(lab_host.address),
                    config_path,
                )
                proc = subprocess.Popen(
                    lab.command(lab_host, argv),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            pid = proc.pid
            proc.returncode = 0  # detached on purpose: `down` ends it by pid
        result.append(
            UpHost(
                name=lab_host.name,
                netns=lab_host.netns,
                address=str(lab_host.address),
                pid=pid,
                channel_dir=str(channel_dir),
                log_path=str(log_path),
            )
        )
    status = UpStatus(
        lab=name,
        state_dir=str(Path(os.path.abspath(config.state_dir))),
        etcd=_joined(endpoints),
        etcd_for_hosts=_joined(host_endpoints),
        prefix=config.coordination.prefix,
        started_etcd=started_etcd,
        hosts=tuple(result),
    )
    _write_status(config, status)
    asyncio.run(_wait_hosts(config, endpoints, status))
    return status


def _joined(endpoints: tuple[Endpoint, ...]) -> str:
    return ",".join(str(e) for e in endpoints)


def _parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


async def _wait_hosts(config: Config, endpoints: tuple[Endpoint, ...], status: UpStatus) -> None:
    """Wait until every host daemon has registered itself in etcd (or died).

    The registrations come from a watch of the registry; the daemons'
    processes are checked locally every tenth of a second meanwhile.
    """
    coordinator = connect(config, endpoints=endpoints)
    cache = RegistryCache(coordinator)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOST_READY_TIMEOUT

    def registered(snap: RegistrySnapshot, h: UpHost) -> bool:
        record = snap.hosts.get(h.name)
        return record is not None and _parent(record.pid) == h.pid

    try:
        try:
            await cache.start()
        except CoordinationError as exc:
            raise ProcessFailed(
                f"cannot read the registry from etcd at {_joined(endpoints)}: {exc}"
            ) from None
        while True:
            waiting = [h for h in status.hosts if not registered(cache.snapshot, h)]
            if not waiting:
                return
            for h in waiting:
                if not alive(h.pid):
                    raise ProcessFailed(
                        f"host daemon {h.name} exited at start; see its log {h.log_path}"
                    )
            left = deadline - loop.time()
            if left <= 0:
                names = ", ".join(sorted(h.name for h in waiting))
                raise ProcessFailed(
                    f"host daemon(s) {names} did not register within "
                    f"{HOST_READY_TIMEOUT:g} s; see {status.hosts[0].log_path}"
                )
            with contextlib.suppress(TimeoutError):
                await cache.wait_for(
                    lambda snap: all(registered(snap, h) for h in status.hosts), min(0.1, left)
                )
    finally:
        await cache.stop()
        await coordinator.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class DownReport:
    servers_deleted: int
    hosts_stopped: int
    lab_removed: bool
    etcd_stopped: bool


def down(
    config: Config,
    *,
    clean_servers: Callable[[Config, UpStatus | None], int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DownReport | None:
    """Remove everything `up` made; None when nothing was up.

    `clean_servers(config, status)` deletes every server (through the host
    daemons while they run, by force after) and returns how many there were.
    """
    say = progress or (lambda _msg: None)
    status = read_status(config)
    lab_name = status.lab if status is not None else DEFAULT_LAB
    lab = Lab(lab_name, state_dir=Path(os.path.abspath(config.state_dir)))
    if status is None and (not lab.exists() or lab.foreign()):
        return None  # nothing of ours: another state directory's lab is left alone
    for h in status.hosts if status is not None else ():
        # A frozen host (`lab freeze`) could neither delete its servers nor exit.
        with contextlib.suppress(ServergroupError):
            lab.thaw(h.name)
    deleted = clean_servers(config, status) if clean_servers is not None else 0
    stopped = 0
    for h in status.hosts if status is not None else ():
        if _our_host_daemon(h.pid, config, h.name) is not None:
            say(f"stopping host daemon {h.name} (pid {h.pid})")
            _end(h.pid, config, h.name)
            stopped += 1
    say(f"removing lab {lab_name}")
    removed = lab.down()
    etcd_stopped = False
    if status is not None and status.started_etcd:
        say("stopping the local etcd")
        etcd_stopped = LocalEtcd(config).stop() is not None
    with contextlib.suppress(FileNotFoundError):
        _state_path(config).unlink()
    shutil.rmtree(up_dir(config) / "hosts", ignore_errors=True)
    return DownReport(
        servers_deleted=deleted,
        hosts_stopped=stopped,
        lab_removed=removed,
        etcd_stopped=etcd_stopped,
    )


def clean_servers(config: Config, status: UpStatus | None) -> int:
    """Delete every server: through the host daemons, then by force; forget groups.

    Returns how many servers there were. Lab servers whose records are gone
    but whose directories remain (a crash in between) are removed too.
    """
    return asyncio.run(_clean_servers(config, status))


def _dead_hosts(config: Config, status: UpStatus | None) -> set[str]:
    """Our hosts whose daemon is gone (crashed, `lab crash`): nobody will delete their servers.

    Their records may outlive them by a lease TTL; waiting for them to carry
    out a delete would only wait out the operation's timeout.
    """
    hosts = status.hosts if status is not None else ()
    return {h.name for h in hosts if _our_host_daemon(h.pid, config, h.name) is None}


async def _clean_servers(config: Config, status: UpStatus | None) -> int:
    driver = LabDriver(config.state_dir)
    count = 0
    endpoints: tuple[Endpoint, ...] = config.coordination.endpoints
    if not endpoints:
        local = LocalEtcd(config).status()
        endpoints = (local.endpoint,) if local.running else ()
    if endpoints:
        coordination = config.coordination
        coordinator = connect(config, endpoints=endpoints)
        try:
            registry = Registry(coordinator)
            servers = await registry.list_servers()
            count = len(servers)
            ops = Operations(registry, timeout=coordination.operation_timeout)
            # Our own hosts are judged by their process: one just thawed may not have
            # registered again yet, and will carry the delete out once it has.
            ours = {h.name for h in status.hosts} if status is not None else set()
            dead = _dead_hosts(config, status) | (
                {s.host for s in servers} - set(await ops.live_hosts()) - ours
            )
            served = [s for s in servers if s.host not in dead]
            results = await asyncio.gather(
                *(ops.delete(s.name) for s in served), return_exceptions=True
            )
            forced: list[tuple[Server, object]] = [
                (s, f"host {s.host} is not running") for s in servers if s.host in dead
            ]
            forced += [
                (s, r) for s, r in zip(served, results, strict=True) if isinstance(r, BaseException)
            ]
            for server, why in forced:
                log.warning("forcing the removal of server %s: %s", server.name, why)
                await asyncio.to_thread(driver.delete_sync, server.name, server.spec.instance)
                await registry.remove_server(server.name)
            await coordinator.delete_prefix(GROUPS)
            await coordinator.delete_prefix(BROADCASTS)
        except CoordinationError as exc:
            log.warning("cannot clean the registry: %s", exc)
        finally:
            await coordinator.close()
    servers_dir = driver.server_dir("x").parent
    if servers_dir.is_dir():
        for leftover in sorted(servers_dir.iterdir()):
            log.warning("removing leftover lab server %s", leftover.name)
            await asyncio.to_thread(driver.delete_sync, leftover.name, "")
            count += 1
    for leftover_vm in await asyncio.to_thread(qemu_remove_all, config.state_dir):
        log.warning("removed leftover qemu server %s", leftover_vm)
    return count


__all__ = [
    "DEFAULT_LAB",
    "DownReport",
    "UpHost",
    "UpStatus",
    "clean_servers",
    "down",
    "read_status",
    "up",
    "up_dir",
]

"""The host daemon's supervisor (`servergroup host --supervised`) and `servergroup host cleanup`.

Real things throughout: a real etcd, a real `servergroup host` under its
supervisor, a real `ocf:heartbeat:Dummy` instance and the journaling test
agent started by the test, a lease of the test's own with a key on it (its
TTL long, so that the key going fast proves a revoke, not an expiry), and a
ledger the test writes as the node role would (the daemons run without
their node role, `SERVERGROUP_SERVICES=false`, so the ledger stays the
test's; the supervisor with the node role is exercised by the exactly-one
rounds in tests/integration/services).
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from servergroup.common.process import command_line, group_members
from servergroup.config import CoordinationConfig
from servergroup.coordination import Coordinator, connect
from servergroup.coordination.etcd_process import EtcdCluster
from servergroup.daemons.supervisor import kill_agent_actions
from servergroup.servers.model import decode_host
from servergroup.servers.registry import host_key
from servergroup.services.ledger import Ledger, LedgerEntry, ledger_path, read_ledger, write_ledger
from servergroup.services.model import AgentRef, Service
from servergroup.services.ocf import OcfAgent
from servergroup.services.placement import InstanceId
from servergroup.services.store import blocked_key, decode_block, owner_key
from tests.fixtures import wait
from tests.fixtures.daemons import Daemon, DaemonFactory

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

SYSTEM_OCF = Path("/usr/lib/ocf")
TEST_OCF = Path(__file__).resolve().parents[2] / "fixtures" / "ocf"
DUMMY = AgentRef(provider="heartbeat", type="Dummy")
JOURNAL = AgentRef(provider="sgtest", type="journal")
LONG_TTL = 60  # seconds: a key of this lease that goes within the waits below was revoked
NODE = "n1"
WAIT = 20.0
wait_until = functools.partial(wait.wait_until, timeout=WAIT)
eventually = functools.partial(wait.eventually, timeout=WAIT)


class Host:
    """One supervised host daemon of the test's own."""

    def __init__(self, daemon: Daemon, state_dir: Path) -> None:
        self.supervisor = daemon
        self.state_dir = state_dir

    def child(self) -> int | None:
        try:
            kids = psutil.Process(self.supervisor.pid).children()
        except psutil.Error:
            return None
        for kid in kids:
            try:
                argv = kid.cmdline()
            except psutil.Error:  # gone, or a zombie not yet reaped (a short-lived child)
                continue
            if "host" in argv and "--supervised" not in argv:
                return kid.pid
        return None

    @property
    def ledger(self) -> Path:
        return ledger_path(self.state_dir, NODE)


def host_argv(state_dir: Path, endpoints: str, prefix: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "servergroup",
        *extra,
        "--state-dir",
        str(state_dir),
        "--endpoints",
        endpoints,
        "--prefix",
        prefix,
        "--log-json",
        "-v",
        "host",
        "--supervised",
        "--name",
        NODE,
        # Its own host address: the root namespace is shared with parallel tests.
        "--address",
        f"sgt{secrets.token_hex(5)}",
        "--channel-dir",
        str(state_dir / "channels"),
        "--driver",
        "lab",
    ]


async def host_cleanup(
    state_dir: Path, endpoints: str, prefix: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`servergroup host cleanup --name n1` on `state_dir`, its output captured."""
    argv = [sys.executable, "-m", "servergroup", "--state-dir", str(state_dir)]
    argv += ["--endpoints", endpoints, "--prefix", prefix, "host", "cleanup", "--name", NODE]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=timeout, check=False
    )


async def registered_pid(coordinator: Coordinator) -> int | None:
    kv = await coordinator.get(host_key(NODE))
    return decode_host(kv.value).pid if kv is not None else None


async def start_host(
    daemon: DaemonFactory,
    tmp_path: Path,
    coordinator: Coordinator,
    endpoints: str,
    prefix: str,
    *extra: str,
) -> Host:
    state_dir = tmp_path / "state"
    (state_dir / "channels").mkdir(parents=True, exist_ok=True)
    # Without the node role: the ledger is the test's, written as a node role would.
    handle = daemon(
        host_argv(state_dir, endpoints, prefix, *extra),
        name="supervisor",
        env={"SERVERGROUP_SERVICES": "false"},
    )
    host = Host(handle, state_dir)

    async def up() -> bool:
        child = host.child()
        return child is not None and await registered_pid(coordinator) == child

    await eventually(up, "the supervised host daemon registered")
    return host


def dummy_entry(tmp_path: Path, token: int, index: int = 0) -> tuple[LedgerEntry, OcfAgent]:
    params = {"state": str(tmp_path / f"dummy-{index}.state")}
    service = Service(name="web", agent=DUMMY, parameters=params, stop_timeout=5.0)
    agent = OcfAgent(DUMMY, instance=f"web:{index}", parameters=params, ocf_root=SYSTEM_OCF)
    entry = LedgerEntry(
        instance=InstanceId(service="web", index=index), token=token, service=service
    )
    return entry, agent


@pytest.fixture
async def store(etcd_server: EtcdCluster, etcd_prefix: str) -> AsyncIterator[Coordinator]:
    coordinator = connect(CoordinationConfig(), endpoints=etcd_server.endpoints, prefix=etcd_prefix)
    yield coordinator
    await coordinator.delete_prefix("")
    await coordinator.close()


def endpoints_of(cluster: EtcdCluster) -> str:
    return ",".join(str(e) for e in cluster.endpoints)


async def test_a_killed_daemon_has_its_instance_stopped_and_its_lease_revoked_at_once(
    daemon: DaemonFactory,
    tmp_path: Path,
    store: Coordinator,
    etcd_server: EtcdCluster,
    etcd_prefix: str,
) -> None:
    host = await start_host(daemon, tmp_path, store, endpoints_of(etcd_server), etcd_prefix)
    first = host.child()
    assert first is not None
    lease = await store.grant(LONG_TTL)
    token = await store.create(owner_key(InstanceId(service="web", index=0)), b"{}", lease=lease.id)
    assert token is not None
    entry, dummy = dummy_entry(tmp_path, token)
    assert (await dummy.start(timeout=10)).ok
    assert (await dummy.monitor(timeout=10)).ok
    ledger = Ledger(
        node=NODE, lease=lease.id, pid=first, ocf_root=str(SYSTEM_OCF), entries=(entry,)
    )
    write_ledger(host.ledger, ledger)

    # `host cleanup` refuses the ledger of a daemon that still runs.
    refused = await host_cleanup(host.state_dir, endpoints_of(etcd_server), etcd_prefix, 30)
    assert refused.returncode != 0
    assert "still runs" in refused.stderr + refused.stdout
    assert (await dummy.monitor(timeout=10)).ok

    os.kill(first, signal.SIGKILL)
    await eventually(lambda: _gone(store, entry), "the owner key deleted by the revoke")
    assert (await dummy.monitor(timeout=10)).code == 7  # not running
    assert read_ledger(host.ledger) is None
    # The supervisor started the daemon again.
    await eventually(
        lambda: _registered_again(store, host, first), "the daemon restarted and registered"
    )
    assert host.supervisor.running
    host.supervisor.wait_for_log(r"after the host daemon died: node n1: stopped web/0; revoked")


async def _gone(store: Coordinator, entry: LedgerEntry) -> bool:
    return await store.get(owner_key(entry.instance)) is None


async def _registered_again(store: Coordinator, host: Host, old: int) -> bool:
    child = host.child()
    return child not in (None, old) and await registered_pid(store) == child


async def test_a_failed_stop_is_blocked_and_the_lease_is_kept(
    daemon: DaemonFactory,
    tmp_path: Path,
    store: Coordinator,
    etcd_server: EtcdCluster,
    etcd_prefix: str,
) -> None:
    host = await start_host(daemon, tmp_path, store, endpoints_of(etcd_server), etcd_prefix)
    first = host.child()
    assert first is not None
    lease = await store.grant(LONG_TTL)
    web = InstanceId(service="web", index=0)
    db = InstanceId(service="db", index=0)
    web_token = await store.create(owner_key(web), b"{}", lease=lease.id)
    db_token = await store.create(owner_key(db), b"{}", lease=lease.id)
    assert web_token is not None
    assert db_token is not None
    web_entry, dummy = dummy_entry(tmp_path, web_token)
    params = {
        "state": str(tmp_path / "db.state"),
        "journal": str(tmp_path / "journal"),
        "node": NODE,
    }
    db_service = Service(name="db", agent=JOURNAL, parameters=params, stop_timeout=0.5)
    journal = OcfAgent(JOURNAL, instance="db:0", parameters=params, ocf_root=TEST_OCF)
    assert (await dummy.start(timeout=10)).ok
    assert (await journal.start(timeout=10, fencing_token=db_token)).ok
    (tmp_path / "db.state.hang-stop").touch()  # its stop hangs: killed at the timeout
    db_entry = LedgerEntry(instance=db, token=db_token, service=db_service)
    # One OCF root for both agents, as a node role has it.
    root = tmp_path / "ocf"
    (root / "resource.d").mkdir(parents=True)
    (root / "lib").symlink_to(SYSTEM_OCF / "lib")
    (root / "resource.d" / "heartbeat").symlink_to(SYSTEM_OCF / "resource.d" / "heartbeat")
    (root / "resource.d" / "sgtest").symlink_to(TEST_OCF / "resource.d" / "sgtest")
    write_ledger(
        host.ledger,
        Ledger(
            node=NODE, lease=lease.id, pid=first, ocf_root=str(root), entries=(db_entry, web_entry)
        ),
    )

    os.kill(first, signal.SIGKILL)

    async def blocked() -> bool:
        return await store.get(blocked_key(db)) is not None

    await eventually(blocked, "the block record of the failed stop")
    kv = await store.get(blocked_key(db))
    assert kv is not None
    record = decode_block(kv.value)
    assert (record.node, record.token) == (NODE, db_token)
    assert "stop timed out" in record.reason
    host.supervisor.wait_for_log(r"after the host daemon died: .*blocked db/0")
    # Not revoked: both owner keys are still there; the other instance was stopped.
    assert await store.get(owner_key(db)) is not None
    assert await store.get(owner_key(web)) is not None
    assert (await dummy.monitor(timeout=10)).code == 7
    assert read_ledger(host.ledger) is None  # the block holds what the ledger held
    await store.revoke(lease.id)


async def test_the_supervisor_survives_an_unreachable_store(
    etcd_single: EtcdCluster, daemon: DaemonFactory, tmp_path: Path
) -> None:
    config = tmp_path / "servergroup.toml"
    config.write_text("[coordination]\noperation_timeout = 2.0\n")
    endpoints = endpoints_of(etcd_single)
    coordinator = connect(CoordinationConfig(), endpoints=etcd_single.endpoints, prefix="/sv/")
    try:
        host = await start_host(
            daemon, tmp_path, coordinator, endpoints, "/sv/", "--config", str(config)
        )
        first = host.child()
        assert first is not None
        entry, dummy = dummy_entry(tmp_path, token=1)
        assert (await dummy.start(timeout=10)).ok
        write_ledger(
            host.ledger,
            Ledger(node=NODE, lease=12345, pid=first, ocf_root=str(SYSTEM_OCF), entries=(entry,)),
        )
        member = etcd_single.members[0]
        member.freeze()
        try:
            os.kill(first, signal.SIGKILL)
            host.supervisor.wait_for_log(r"store unreachable", timeout=30)
            assert (await dummy.monitor(timeout=10)).code == 7  # stopped all the same
            assert host.supervisor.running
        finally:
            member.thaw()
        await eventually(
            lambda: _registered_again(coordinator, host, first),
            "the daemon restarted once the store was back",
            timeout=60,
        )
    finally:
        await coordinator.close()


async def test_sigterm_ends_daemon_and_supervisor_without_restart(
    daemon: DaemonFactory,
    tmp_path: Path,
    store: Coordinator,
    etcd_server: EtcdCluster,
    etcd_prefix: str,
) -> None:
    host = await start_host(daemon, tmp_path, store, endpoints_of(etcd_server), etcd_prefix)
    child = host.child()
    assert child is not None
    host.supervisor.send_signal(signal.SIGTERM)
    assert host.supervisor.wait(30) == 0
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert "restarting" not in host.supervisor.log_text()
    # The daemon stopped as asked: status 0, a clean end, no cleanup after it.
    assert f"host daemon pid {child} exited with status 0" in host.supervisor.log_text()
    assert "after the host daemon died" not in host.supervisor.log_text()


async def test_host_cleanup_stops_and_revokes_after_a_dead_daemon(
    tmp_path: Path, store: Coordinator, etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    """The systemd form: `servergroup host cleanup` as ExecStopPost= runs it."""
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    lease = await store.grant(LONG_TTL)
    token = await store.create(owner_key(InstanceId(service="web", index=0)), b"{}", lease=lease.id)
    assert token is not None
    entry, dummy = dummy_entry(tmp_path, token)
    assert (await dummy.start(timeout=10)).ok
    state_dir = tmp_path / "state"
    path = ledger_path(state_dir, NODE)
    write_ledger(
        path,
        Ledger(node=NODE, lease=lease.id, pid=dead.pid, ocf_root=str(SYSTEM_OCF), entries=(entry,)),
    )
    done = await host_cleanup(state_dir, endpoints_of(etcd_server), etcd_prefix, 60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("node n1: stopped web/0; revoked lease"), done.stdout
    assert await store.get(owner_key(entry.instance)) is None
    assert (await dummy.monitor(timeout=10)).code == 7
    assert read_ledger(path) is None


def test_agent_actions_left_running_are_killed_with_their_group() -> None:
    action = subprocess.Popen(
        ["sh", "-c", "sleep 100 & sleep 100"],
        env={**os.environ, "OCF_RESOURCE_INSTANCE": "web:0"},
        start_new_session=True,
    )
    other = subprocess.Popen(["sleep", "100"], start_new_session=True)
    # A fork of the daemon caught before it became the agent: the daemon's own argv.
    fork = subprocess.Popen(["sleep", "101"], start_new_session=True)
    try:
        wait_until(lambda: len(group_members(action.pid)) >= 2, "the action and its child")
        wait_until(lambda: command_line(fork.pid) == ["sleep", "101"], "the stand-in fork")
        wait_until(lambda: command_line(other.pid) == ["sleep", "100"], "the other process")
        killed = kill_agent_actions(
            [action.pid, other.pid, fork.pid], is_daemon_fork=lambda argv: argv[1:] == ["101"]
        )
        assert killed == [action.pid, fork.pid]
        assert action.wait(5) == -signal.SIGKILL
        assert fork.wait(5) == -signal.SIGKILL
        wait_until(lambda: not group_members(action.pid), "the action's group gone", timeout=5)
        assert other.poll() is None
    finally:
        for proc in (action, other, fork):
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


#: A supervisor of a stand-in daemon (argv[1:]), quick restarts, a cleanup that only says so.
STAND_IN_SUPERVISOR = """
import sys
from servergroup.common.backoff import Backoff
from servergroup.common.logsetup import setup_logging
from servergroup.config import load_config
from servergroup.daemons.supervisor import Supervisor

setup_logging(json=False)
supervisor = Supervisor(
    sys.argv[1:],
    config=load_config(),
    node="n1",
    backoff=Backoff(initial=0.05, max_delay=0.1),
    cleanup=lambda _config, _node, pid: print("cleanup after", pid, flush=True),
)
sys.exit(supervisor.run())
"""
STAND_IN = "import sys; open(sys.argv[1], 'a').write('x'); sys.exit(int(sys.argv[2]))"


def test_a_dying_daemon_is_cleaned_up_after_and_restarted_until_sigterm(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    argv = [sys.executable, "-c", STAND_IN_SUPERVISOR, sys.executable, "-c", STAND_IN]
    supervisor = daemon(
        [*argv, str(runs), "1"], env={"SERVERGROUP_STATE_DIR": str(tmp_path)}, name="supervisor"
    )
    wait_until(lambda: runs.exists() and len(runs.read_text()) >= 3, "three runs of the daemon")
    supervisor.wait_for_log(r"cleanup after")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(10) == 0


def test_a_daemon_refusing_its_command_line_is_not_restarted(
    daemon: DaemonFactory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    argv = [sys.executable, "-c", STAND_IN_SUPERVISOR, sys.executable, "-c", STAND_IN]
    supervisor = daemon(
        [*argv, str(runs), "2"], env={"SERVERGROUP_STATE_DIR": str(tmp_path)}, name="supervisor"
    )
    assert supervisor.wait(10) == 2
    assert runs.read_text() == "x"
    assert "refused its command line" in supervisor.log_text()


async def test_a_killed_supervisor_takes_its_daemon_with_it(
    daemon: DaemonFactory,
    tmp_path: Path,
    store: Coordinator,
    etcd_server: EtcdCluster,
    etcd_prefix: str,
) -> None:
    host = await start_host(daemon, tmp_path, store, endpoints_of(etcd_server), etcd_prefix)
    child = host.child()
    assert child is not None
    host.supervisor.kill()
    # The kernel tells the daemon (SIGTERM: it stops in order, and its record goes).
    wait_until(lambda: not psutil.pid_exists(child), "the orphaned daemon gone", timeout=20)

    async def deregistered() -> bool:
        return await registered_pid(store) is None

    await eventually(deregistered, "the daemon's record gone")


async def test_a_new_supervisor_cleans_up_after_a_daemon_that_died_with_its_supervisor(
    daemon: DaemonFactory,
    tmp_path: Path,
    store: Coordinator,
    etcd_server: EtcdCluster,
    etcd_prefix: str,
) -> None:
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    lease = await store.grant(LONG_TTL)
    token = await store.create(owner_key(InstanceId(service="web", index=0)), b"{}", lease=lease.id)
    assert token is not None
    entry, dummy = dummy_entry(tmp_path, token)
    assert (await dummy.start(timeout=10)).ok
    write_ledger(
        ledger_path(tmp_path / "state", NODE),
        Ledger(node=NODE, lease=lease.id, pid=dead.pid, ocf_root=str(SYSTEM_OCF), entries=(entry,)),
    )
    host = await start_host(daemon, tmp_path, store, endpoints_of(etcd_server), etcd_prefix)
    assert await store.get(owner_key(entry.instance)) is None
    assert (await dummy.monitor(timeout=10)).code == 7
    assert read_ledger(host.ledger) is None
    log = host.supervisor.log_text()
    assert log.index("cleaning up after it") < log.index("supervising host daemon")

"""The OCF agent runner (`services.ocf`) against the real ClusterLabs agents and agents of our own.

The real ones come from Debian's resource-agents (`ocf:heartbeat:Dummy`,
`ocf:heartbeat:anything`) and pacemaker-resource-agents
(`ocf:pacemaker:Stateful`); `make test` installs them. Our own tiny agents
live in a temporary OCF root beside them (`ocf:sgtest:<name>`), for what
the real ones never do: hang, fork, exit with each class of error, dump
their environment.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from servergroup.common.process import alive
from servergroup.services.metadata import MetadataError
from servergroup.services.model import AgentRef
from servergroup.services.ocf import DEFAULT_OCF_ROOT, AgentNotFound, OcfAgent
from servergroup.services.ocf_codes import OcfStatus, Severity

pytestmark = pytest.mark.timeout(60)

DUMMY = AgentRef(provider="heartbeat", type="Dummy")
STATEFUL = AgentRef(provider="pacemaker", type="Stateful")
ANYTHING = AgentRef(provider="heartbeat", type="anything")

# An agent of our own: behaves as OCF_RESKEY_mode says, records its environment.
TEST_AGENT = textwrap.dedent(
    """\
    #!/bin/sh
    action="$1"
    env | sort > "$OCF_RESKEY_dir/env.$action"
    case "$action" in
    meta-data)
        cat <<'END'
    <?xml version="1.0"?>
    <resource-agent name="sgtest">
    <parameters><parameter name="mode" required="1"><content type="string"/></parameter>
    </parameters>
    <actions>
    <action name="start" timeout="7s"/>
    <action name="stop" timeout="1m"/>
    <action name="monitor" depth="0" timeout="500ms" interval="5"/>
    <action name="monitor" depth="20" timeout="9" interval="60s"/>
    <action name="recover" timeout="3"/>
    <action name="reload-agent" timeout="3"/>
    </actions>
    <special tag="rgmanager"><attributes maxinstances="1"/></special>
    </resource-agent>
    END
        exit 0;;
    esac
    case "$OCF_RESKEY_mode" in
    hang)
        sleep 1000 &
        echo $! > "$OCF_RESKEY_dir/child.pid"
        echo "about to hang"
        wait;;
    stubborn)
        trap '' TERM
        sleep 1000 &
        echo $! > "$OCF_RESKEY_dir/child.pid"
        wait;;
    exit-*)
        echo "ocf-exit-reason:exiting as asked" >&2
        exit "${OCF_RESKEY_mode#exit-}";;
    chatty)
        i=0; while [ $i -lt 2000 ]; do echo "line $i of noise"; i=$((i+1)); done
        exit 0;;
    signal)
        kill -KILL $$;;
    esac
    exit 0
    """
)


@pytest.fixture
def ocf_root(tmp_path: Path) -> Path:
    root = tmp_path / "ocf"
    agent = root / "resource.d" / "sgtest" / "agent"
    agent.parent.mkdir(parents=True)
    agent.write_text(TEST_AGENT)
    agent.chmod(0o755)
    return root


def ours(ocf_root: Path, tmp_path: Path, mode: str) -> OcfAgent:
    return OcfAgent(
        AgentRef(provider="sgtest", type="agent"),
        instance="svc:0",
        parameters={"mode": mode, "dir": str(tmp_path)},
        ocf_root=ocf_root,
    )


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


async def test_dummy_start_monitor_stop_with_its_state_file(tmp_path: Path) -> None:
    state = tmp_path / "dummy.state"
    agent = OcfAgent(DUMMY, instance="dummy:0", parameters={"state": str(state)})
    assert agent.path == DEFAULT_OCF_ROOT / "resource.d/heartbeat/Dummy"
    probe = await agent.monitor(timeout=10)
    assert probe.status is OcfStatus.NOT_RUNNING
    assert probe.ok  # a monitor saying "not running" is a state, not a failure
    started = await agent.start(timeout=10, fencing_token=42)
    assert started.status is OcfStatus.SUCCESS
    assert state.exists()
    assert (await agent.monitor(timeout=10, depth=0)).status is OcfStatus.SUCCESS
    stopped = await agent.stop(timeout=10)
    assert stopped.status is OcfStatus.SUCCESS
    assert not state.exists()
    assert (await agent.monitor(timeout=10)).status is OcfStatus.NOT_RUNNING
    again = await agent.stop(timeout=10)  # stop is idempotent
    assert again.ok


async def test_stateful_promotes_and_demotes_and_monitor_says_master(tmp_path: Path) -> None:
    state = tmp_path / "stateful.state"
    agent = OcfAgent(STATEFUL, instance="csnap:1", parameters={"state": str(state)})
    assert (await agent.start(timeout=10)).ok
    assert (await agent.monitor(timeout=10)).status is OcfStatus.SUCCESS
    assert (await agent.promote(timeout=10, fencing_token=7)).ok
    assert state.read_text().strip() == "Promoted"
    master = await agent.monitor(timeout=10)
    assert master.status is OcfStatus.RUNNING_MASTER
    assert master.severity is Severity.NONE
    assert (await agent.demote(timeout=10)).ok
    assert (await agent.monitor(timeout=10)).status is OcfStatus.SUCCESS
    assert (await agent.stop(timeout=10)).ok
    assert (await agent.monitor(timeout=10)).status is OcfStatus.NOT_RUNNING


async def test_the_real_agents_meta_data_is_parsed() -> None:
    dummy = await OcfAgent(DUMMY, instance="d").metadata()
    assert dummy.name == "Dummy"
    assert dummy.parameter("state") is not None
    assert dummy.timeout("start") == 20
    assert [(m.depth, m.interval, m.timeout) for m in dummy.monitors()] == [(0, 10, 20)]
    assert dummy.has("reload")
    assert not dummy.has("promote")
    assert dummy.max_instances is None
    stateful = await OcfAgent(STATEFUL, instance="s").metadata()
    assert stateful.name == "Stateful"
    assert stateful.has("promote")
    assert stateful.has("demote")
    assert stateful.has("notify")
    assert stateful.has("reload")  # as reload-agent
    assert stateful.timeout("promote") == 10


async def test_our_agents_meta_data_with_rgmanager_maxinstances(
    ocf_root: Path, tmp_path: Path
) -> None:
    info = await ours(ocf_root, tmp_path, "ok").metadata()
    assert info.max_instances == 1
    assert info.timeout("stop") == 60
    assert [(m.depth, m.interval, m.timeout) for m in info.monitors()] == [
        (0, 5, 0.5),
        (20, 60, 9),
    ]
    assert info.has("recover")
    assert info.has("reload")
    assert not info.has("promote")
    parameter = info.parameter("mode")
    assert parameter is not None
    assert parameter.required


async def test_the_environment_an_action_sees(ocf_root: Path, tmp_path: Path) -> None:
    agent = ours(ocf_root, tmp_path, "ok")
    result = await agent.monitor(timeout=2.5, depth=20, interval=60, fencing_token=1234)
    assert result.ok
    env = read_env(tmp_path / "env.monitor")
    assert env["OCF_ROOT"] == str(ocf_root)
    assert env["OCF_RESOURCE_INSTANCE"] == "svc:0"
    assert env["OCF_RESOURCE_TYPE"] == "agent"
    assert env["OCF_RESOURCE_PROVIDER"] == "sgtest"
    assert (env["OCF_RA_VERSION_MAJOR"], env["OCF_RA_VERSION_MINOR"]) == ("1", "1")
    assert env["OCF_RESKEY_mode"] == "ok"
    assert env["OCF_CHECK_LEVEL"] == "20"
    assert env["OCF_RESKEY_CRM_meta_timeout"] == "2500"
    assert env["OCF_RESKEY_CRM_meta_interval"] == "60000"
    assert env["OCF_RESKEY_fencing_token"] == "1234"
    await agent.start(timeout=5)
    start_env = read_env(tmp_path / "env.start")
    assert "OCF_CHECK_LEVEL" not in start_env
    assert "OCF_RESKEY_fencing_token" not in start_env


async def test_a_hanging_agent_is_killed_with_its_whole_group(
    ocf_root: Path, tmp_path: Path
) -> None:
    agent = ours(ocf_root, tmp_path, "hang")
    result = await agent.start(timeout=0.5)
    assert result.timed_out
    assert result.code is None
    assert result.severity is Severity.SOFT
    assert "about to hang" in result.stdout
    assert "timed out" in result.describe()
    child = int((tmp_path / "child.pid").read_text())
    assert not alive(child)  # the agent's child went with it


async def test_an_agent_ignoring_sigterm_is_killed(ocf_root: Path, tmp_path: Path) -> None:
    result = await ours(ocf_root, tmp_path, "stubborn").stop(timeout=0.3)
    assert result.timed_out
    assert result.severity is Severity.SOFT
    child = int((tmp_path / "child.pid").read_text())
    assert not alive(child)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1, Severity.SOFT),
        (2, Severity.HARD),
        (3, Severity.HARD),
        (4, Severity.HARD),
        (5, Severity.HARD),
        (6, Severity.FATAL),
        (7, Severity.SOFT),  # a start that leaves it not running failed
        (9, Severity.SOFT),
        (42, Severity.SOFT),  # not an OCF code at all
    ],
)
async def test_each_exit_class_of_a_start(
    ocf_root: Path, tmp_path: Path, code: int, expected: Severity
) -> None:
    result = await ours(ocf_root, tmp_path, f"exit-{code}").start(timeout=5)
    assert result.code == code
    assert result.severity is expected
    assert result.exit_reason == "exiting as asked"
    assert not result.timed_out


async def test_what_is_not_a_failure_depends_on_the_action(ocf_root: Path, tmp_path: Path) -> None:
    not_running = ours(ocf_root, tmp_path, "exit-7")
    assert (await not_running.stop(timeout=5)).severity is Severity.NONE
    assert (await not_running.monitor(timeout=5)).severity is Severity.NONE
    master = ours(ocf_root, tmp_path, "exit-8")
    assert (await master.monitor(timeout=5)).severity is Severity.NONE
    assert (await master.start(timeout=5)).severity is Severity.SOFT


async def test_a_killed_agent_and_bounded_output(ocf_root: Path, tmp_path: Path) -> None:
    killed = await ours(ocf_root, tmp_path, "signal").monitor(timeout=5)
    assert killed.code is None
    assert not killed.timed_out
    assert killed.severity is Severity.SOFT
    agent = OcfAgent(
        AgentRef(provider="sgtest", type="agent"),
        instance="svc:0",
        parameters={"mode": "chatty", "dir": str(tmp_path)},
        ocf_root=ocf_root,
        output_limit=100,
    )
    chatty = await agent.start(timeout=5)
    assert chatty.ok
    assert len(chatty.stdout) <= 100
    assert chatty.stdout.endswith("line 1999 of noise\n")


async def test_a_missing_agent(ocf_root: Path, tmp_path: Path) -> None:
    with pytest.raises(AgentNotFound, match=r"ocf:heartbeat:NoSuchAgent is not installed"):
        OcfAgent(AgentRef(provider="heartbeat", type="NoSuchAgent"), instance="x")
    agent = ours(ocf_root, tmp_path, "ok")
    agent.path.unlink()  # gone after it was resolved: the node cannot run it
    result = await agent.start(timeout=5)
    assert result.status is OcfStatus.ERR_INSTALLED
    assert result.severity is Severity.HARD
    with pytest.raises(MetadataError):
        await agent.metadata()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def fetch(url: str, deadline: float) -> bytes:
    while True:
        try:
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.root
async def test_anything_runs_a_real_web_server_we_fetch_a_page_from(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("ocf:heartbeat:anything starts its process through su: run as root")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the service\n")
    port = free_port()
    pidfile = tmp_path / "web.pid"
    agent = OcfAgent(
        ANYTHING,
        instance="web:0",
        parameters={
            "binfile": sys.executable,
            "cmdline_options": f"-m http.server {port} --bind 127.0.0.1 --directory {site}",
            "pidfile": str(pidfile),
            "logfile": str(tmp_path / "web.log"),
            "workdir": str(tmp_path),
        },
    )
    assert (await agent.monitor(timeout=10)).status is OcfStatus.NOT_RUNNING
    started = await agent.start(timeout=20)
    assert started.ok, started.describe()
    try:
        page = await fetch(f"http://127.0.0.1:{port}/index.html", time.monotonic() + 15)
        assert page == b"hello from the service\n"
        assert (await agent.monitor(timeout=10)).status is OcfStatus.SUCCESS
    finally:
        stopped = await agent.stop(timeout=20)
    assert stopped.ok, stopped.describe()
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    assert pid is None or not alive(pid)
    assert (await agent.monitor(timeout=10)).status is OcfStatus.NOT_RUNNING
    with pytest.raises(urllib.error.URLError, match="refused"):
        await fetch(f"http://127.0.0.1:{port}/", time.monotonic())

"""A real multi-host deployment: three hosts, each with its own etcd member, over TLS.

As docs/guides/deployment.md tells an operator, with the lab's three hosts
standing in for three machines:

1. `servergroup lab up --hosts 3`; `servergroup etcd certs` makes a CA, a
   certificate per member (valid for its host's address) and one for
   servergroup;
2. each host runs an etcd member on its own address (`servergroup lab exec
   hN -- etcd ...`), the three forming one cluster that speaks TLS to
   clients and peers and demands client certificates from both;
3. a config file names the three `https://` endpoints, the CA, the client
   certificate and key; `servergroup up --hosts 3` with it starts a host
   daemon in each host on that cluster (no local etcd);
4. a group with a server on h1 and one on h2 (messaging between them), and
   the `ocf:heartbeat:Dummy` service of examples/services/dummy.toml, which
   runs on h1;
5. the members of the group message each other across hosts;
6. `servergroup lab crash h1` ends everything on h1: its host daemon, its
   servers' guest agents and its etcd member. The two members left keep a
   quorum; the server of h1 is rebuilt on h3, the service fails over to h2,
   and the members of the group message each other again.

One test, in the default run: 60 to 100 s on a loaded machine (load 13 to 17).
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.coordination.etcd_process import (
    EtcdCluster,
    EtcdMemberSpec,
    EtcdProcess,
    MemberTls,
)
from tests.fixtures import wait
from tests.fixtures.daemons import show_log_on_failure
from tests.fixtures.lab import unique_lab_name
from tests.fixtures.setup import AppProcess, Setup
from tests.integration.daemons.test_restarts import (
    notification,
    send_until_received,
    status_of,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(400)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "services"
CLIENT_PORT, PEER_PORT = 2379, 2380
HOSTS = ("h1", "h2", "h3")
#: Every 0.2 s: a check runs the CLI, which reads etcd.
wait_until = functools.partial(wait.wait_until, timeout=60.0, interval=0.2)


def in_host(lab_exec: list[str], host: str, argv: list[str]) -> list[str]:
    """`servergroup lab exec HOST -- argv`: how a member is started in its host."""
    return [*lab_exec, host, "--", *argv]


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> Iterator[tuple[Setup, EtcdCluster]]:
    """Steps 1-3 of the module docstring; `servergroup down` and the members' end after."""
    state_dir = Path(tempfile.mkdtemp(prefix="sg-", dir="/tmp"))  # short: socket paths
    setup = Setup(state_dir, unique_lab_name(), (0, 0))
    for var in [v for v in setup.env if v.startswith("SERVERGROUP_ETCD")]:
        del setup.env[var]
    setup.env["SERVERGROUP_EVACUATION_GRACE"] = "1"
    cluster: EtcdCluster | None = None
    try:
        setup.run("lab", "up", "--hosts", "3")
        lab = setup.json("lab", "list")
        addresses = {h["name"]: h["address"] for h in lab["hosts"]}
        certs = state_dir / "certs"
        setup.run(
            "etcd",
            "certs",
            str(certs),
            "--client",
            "servergroup",
            *(f"--member={h}={addresses[h]}" for h in HOSTS),
        )
        initial = tuple((h, f"https://{addresses[h]}:{PEER_PORT}") for h in HOSTS)
        members = []
        lab_exec = setup.argv("--state-dir", str(state_dir), "lab", "exec", "--name", setup.lab)
        for h in HOSTS:
            spec = EtcdMemberSpec(
                name=h,
                data_dir=state_dir / "etcd" / h,
                host=addresses[h],
                client_port=CLIENT_PORT,
                peer_port=PEER_PORT,
                initial_cluster=initial,
                cluster_token=f"deploy-{setup.lab}",
                tls=MemberTls(
                    ca_file=certs / "ca.crt",
                    cert_file=certs / f"{h}.crt",
                    key_file=certs / f"{h}.key",
                ),
            )
            members.append(
                EtcdProcess(
                    spec,
                    log_path=state_dir / f"etcd-{h}.log",
                    launcher=functools.partial(in_host, lab_exec, h),
                )
            )
            show_log_on_failure(request.node, f"etcd member {h}", state_dir / f"etcd-{h}.log")
        cluster = EtcdCluster(members)
        cluster.start(30.0)
        config = state_dir / "servergroup.toml"
        endpoints = ", ".join(f'"https://{addresses[h]}:{CLIENT_PORT}"' for h in HOSTS)
        config.write_text(
            "[coordination]\n"
            f"endpoints = [{endpoints}]\n"
            f'ca_file = "{certs / "ca.crt"}"\n'
            f'cert_file = "{certs / "servergroup.crt"}"\n'
            f'key_file = "{certs / "servergroup.key"}"\n'
        )
        setup.env["SERVERGROUP_CONFIG"] = str(config)
        up = setup.run("up", "--hosts", "3", timeout=120.0)
        assert "etcd: the configured cluster https://" in up.stdout
        for path in setup.host_logs():
            show_log_on_failure(request.node, f"host daemon {path.parent.name}", path)
        yield setup, cluster
    finally:
        for app in setup.apps:
            app.stop()
        for path in setup.guest_logs():
            show_log_on_failure(request.node, f"guest agent {path.parent.name}", path)
        setup.run("down", check=False, timeout=120.0)
        setup.run("lab", "down", check=False)
        if cluster is not None:
            cluster.kill()
        shutil.rmtree(state_dir, ignore_errors=True)


def service_nodes(setup: Setup) -> list[str]:
    listing = setup.json("service", "list")
    (dummy,) = [s for s in listing["services"] if s["name"] == "dummy"]
    return list(dummy["nodes"]) if dummy["running"] else []


def bring_up_a_group_and_a_service(setup: Setup) -> AppProcess:
    """Step 4: servers a (h1) and b (h2) of an anti-affinity group, dummy on h1; b's app."""
    # No etcd of servergroup's own: the hosts use the cluster, over TLS.
    assert not (setup.state_dir / "etcd" / "data").exists()
    up = json.loads((setup.state_dir / "up" / "state.json").read_text())
    assert up["started_etcd"] is False
    assert up["etcd_for_hosts"].count("https://") == 3
    assert sorted(h["name"] for h in setup.json("host", "list")) == list(HOSTS)
    setup.run("group", "create", "g", "--policy", "anti-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "b", "--group", "g", "--host", "h2")
    watcher = setup.app("b")
    watcher.wait_for(status_of({"a", "b"}))
    setup.run("service", "add", str(EXAMPLES / "dummy.toml"))
    assert wait_until(lambda: service_nodes(setup) == ["h1"], "dummy runs on h1")
    return watcher


def test_three_hosts_with_their_own_etcd_members_survive_a_crash(
    deployment: tuple[Setup, EtcdCluster],
) -> None:
    setup, cluster = deployment
    watcher = bring_up_a_group_and_a_service(setup)
    listener = setup.app("a")
    listener.wait_for(status_of({"a", "b"}))
    send_until_received(setup, "b", listener, "from h2 to h1 over the TLS cluster")
    listener.stop()
    setup.run("lab", "crash", "h1")  # its host daemon, guest agents and etcd member
    watcher.wait_for(notification("a", "compute.instance.lost"), timeout=60)
    watcher.wait_for(notification("a", "compute.instance.evacuate.end"), timeout=120)
    assert not cluster.member("h1").running
    shown = setup.json("server", "show", "a")
    assert (shown["host"], shown["vm_state"]) == ("h3", "active")  # anti-affinity: b is on h2
    assert wait_until(lambda: service_nodes(setup) == ["h2"], "dummy failed over to h2")
    listener = setup.app("a")
    listener.wait_for(status_of({"a", "b"}))
    send_until_received(setup, "b", listener, "across the hosts after h1 crashed")
    assert sorted(h["name"] for h in setup.json("host", "list")) == ["h2", "h3"]

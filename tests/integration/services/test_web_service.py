"""A service that is a real process: a web server run by `ocf:heartbeat:anything`, moved by a kill.

Three lab hosts (`servergroup up --hosts 3`, their daemons supervised as
`up` runs them). The service is ClusterLabs' `anything` agent starting
`python -m http.server` bound to the owner's own lab address (`{node_ip}`,
published as the master's address). The test fetches a page from the
address `where` gives, kills the owner's daemon with SIGKILL, and fetches
the page again from the new owner's address, while the old address no
longer answers: the supervisor stopped the web server through the agent
(from its ledger) and revoked the lease, so that the next node started it
at once. At no moment do the two addresses both serve.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from servergroup.services import store
from servergroup.services.model import AgentRef, DomainMember, FailoverDomain, Monitor, Service
from servergroup.services.placement import InstanceId
from tests.fixtures import wait
from tests.fixtures.setup import SetupFactory
from tests.integration.daemons.test_restarts import daemon_pid
from tests.integration.services import cluster

pytestmark = pytest.mark.timeout(180)

ANYTHING = AgentRef(provider="heartbeat", type="anything")
PORT = 8080
PAGE = b"served by the one instance\n"

wait_until = functools.partial(wait.wait_until, timeout=20.0, interval=0.1)


def fetch(address: str) -> bytes | None:
    """The page at `address`, or None when nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://{address}/index.html", timeout=2) as reply:
            body: bytes = reply.read()
            return body
    except (urllib.error.URLError, OSError):
        return None


def test_the_web_server_moves_with_its_owner_and_runs_in_one_place(
    servergroup_up: SetupFactory, tmp_path: Path
) -> None:
    setup = servergroup_up(3, env=cluster.env(cluster.ocf_root(tmp_path)))
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(PAGE)
    service = Service(
        name="web",
        agent=ANYTHING,
        parameters={
            "binfile": sys.executable,
            "cmdline_options": f"-m http.server {PORT} --bind {{node_ip}} --directory {site}",
            "pidfile": str(tmp_path / "{node}-web.pid"),
            "logfile": str(tmp_path / "{node}-web.log"),
            "workdir": str(tmp_path),
        },
        monitors=(Monitor(depth=0, interval=1.0, timeout=0.9),),
        start_timeout=10.0,
        # `anything` sends SIGTERM, then looks again each second: a stop takes just
        # over 1 s, which the tests' 3 s services lease leaves room for.
        stop_timeout=1.7,
        domain="web-hosts",
        address=f"{{node_ip}}:{PORT}",
    )
    domain = FailoverDomain(
        name="web-hosts",
        members=tuple(DomainMember(node=n, priority=i + 1) for i, n in enumerate(("h1", "h2"))),
        ordered=True,
        restricted=True,
        nofailback=True,
    )
    cluster.define(setup, services=[service], domains=[domain])
    instance = InstanceId(service="web", index=0)

    def published_on(node: str) -> store.MasterRecord | None:
        master = cluster.listing(setup).masters.get("web")
        return master if master is not None and master.node == node else None

    first = cluster.wait_for(setup, "web on h1", lambda lst: published_on("h1"))
    h1_address = first.address
    assert h1_address is not None
    page = wait_until(lambda: fetch(h1_address), f"an answer from h1's {h1_address}")
    assert page == PAGE

    # The owner's daemon dies; its supervisor stops the web server and revokes the
    # lease; h2 (the next in the domain) starts it with a larger token.
    pid = daemon_pid(setup, "h1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    second = cluster.wait_for(setup, "web on h2", lambda lst: published_on("h2"))
    assert second.token > first.token
    h2_address = second.address
    assert h2_address is not None
    assert h2_address != h1_address

    def answer_from_h2() -> bytes | None:
        served = fetch(h2_address)
        if served is None:
            assert fetch(h1_address) is None, "both addresses serve the page"
        return served

    page = wait_until(answer_from_h2, f"an answer from h2's {h2_address}")
    assert page == PAGE
    assert fetch(h1_address) is None  # the old owner's web server is gone
    held = cluster.listing(setup).owners[instance]
    assert (held.record.node, held.token) == ("h2", second.token)
    # h1 comes back under its supervisor, and (nofailback) the service stays put.
    cluster.wait_for(setup, "h1's node role back", lambda lst: lst.nodes.get("h1"))
    time.sleep(2)  # what must not happen has no event to await: a window to see it not
    assert cluster.listing(setup).owners[instance].record.node == "h2"
    assert fetch(h2_address) == PAGE

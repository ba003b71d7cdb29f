"""Fixtures for the HTTP API: one real host daemon per module, on the session's real etcd.

`api_host` starts `servergroup host` (lab driver, service node role) as a
subprocess with its API on a free loopback port and a token file, waits until
`/health` answers, and at teardown deletes the servers the tests made (through
the API), stops the daemon by its PID and removes the module's key prefix. One
daemon per module keeps the default run short; each test uses names of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from servergroup.common.process import stop_process
from servergroup.config import CoordinationConfig, parse_endpoints
from servergroup.coordination import EtcdCoordinator
from servergroup.coordination.etcd_process import EtcdCluster, free_ports
from tests.fixtures.daemons import bug_lines, show_log_on_failure

READY_TIMEOUT = 30.0
#: A lifecycle operation through the API waits for the host (the client waits longer).
CLIENT_TIMEOUT = 60.0


@dataclass
class ApiHost:
    """A running host daemon and what a test needs to talk to its API."""

    name: str
    url: str
    token: str
    prefix: str
    endpoints: str
    state_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    servers: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, *, token: bool = False) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=CLIENT_TIMEOUT, headers=self.auth if token else None
        )

    def server_name(self) -> str:
        """A server name no other test uses; its server is deleted at teardown."""
        name = f"t{secrets.token_hex(4)}"
        self.servers.append(name)
        return name

    def coordinator(self) -> EtcdCoordinator:
        config = CoordinationConfig(prefix=self.prefix)
        return EtcdCoordinator(parse_endpoints(self.endpoints), prefix=self.prefix, config=config)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_healthy(host: ApiHost) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if host.proc.poll() is not None:
            pytest.fail(f"the host daemon exited {host.proc.returncode}: {host.log_text()[-3000:]}")
        try:
            answer = httpx.get(f"{host.url}/health", timeout=2.0, headers=host.auth)
            if answer.status_code == 200:
                return
            last = answer.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)  # the daemon is another process: nothing to await but its answer
    pytest.fail(f"the host daemon's API did not answer within {READY_TIMEOUT:g} s: {last}")


@pytest.fixture(scope="module")
async def api_prefix(etcd_server: EtcdCluster) -> AsyncIterator[str]:
    """A key prefix of the module's own, removed at its end."""
    prefix = f"/sgtest/api-{secrets.token_hex(4)}/"
    yield prefix
    config = CoordinationConfig(prefix=prefix)
    async with EtcdCoordinator(etcd_server.endpoints, prefix=prefix, config=config) as c:
        await c.delete_prefix("")


@contextlib.contextmanager
def root_host_daemon(
    request: pytest.FixtureRequest,
    *,
    endpoints: str,
    prefix: str,
    name_prefix: str = "a",
    env: dict[str, str] | None = None,
    bind: str = "127.0.0.1",
) -> Iterator[ApiHost]:
    """`servergroup host` in the root namespace (lab driver), its API on a free
    port of `bind` (loopback by default) with a token file; its servers deleted
    and it stopped after."""
    state_dir = Path(tempfile.mkdtemp(prefix=f"sg{name_prefix}", dir="/tmp"))  # short paths
    (state_dir / "channels").mkdir()
    token = secrets.token_urlsafe(24)
    token_file = state_dir / "api-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    (port,) = free_ports(1, bind)
    name = f"{name_prefix}{secrets.token_hex(3)}"
    log_path = state_dir / "host.log"
    argv = [
        sys.executable,
        "-m",
        "servergroup",
        "--state-dir",
        str(state_dir),
        "--endpoints",
        endpoints,
        "--prefix",
        prefix,
        "--log-text",
        "-v",
        "host",
        "--name",
        name,
        # Its own host address: the root namespace is shared with parallel tests.
        "--address",
        f"sgt{secrets.token_hex(5)}",
        "--channel-dir",
        str(state_dir / "channels"),
        "--driver",
        "lab",
    ]
    daemon_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SERVERGROUP_")},
        "SERVERGROUP_CPU_POOL": "0-1",  # this machine has 2 CPUs
        "SERVERGROUP_API_BIND": bind,
        "SERVERGROUP_API_PORT": str(port),
        "SERVERGROUP_API_TOKEN_FILE": str(token_file),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=daemon_env
        )
    host = ApiHost(
        name=name,
        url=f"http://{bind}:{port}",
        token=token,
        prefix=prefix,
        endpoints=endpoints,
        state_dir=state_dir,
        log_path=log_path,
        proc=proc,
    )
    show_log_on_failure(request.node, f"host daemon {name}", log_path)
    try:
        _wait_healthy(host)
        yield host
    finally:
        with host.client(token=True) as client:
            for server in host.servers:
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"/servers/{server}")
        if proc.poll() is None:
            stop_process(proc.pid, term_timeout=10.0)
        proc.wait(5)
        bugs = bug_lines(host.log_text())
        shutil.rmtree(state_dir, ignore_errors=True)
        assert not bugs, f"BUG lines in the host daemon's log: {bugs}"


@pytest.fixture(scope="module")
def api_host(
    etcd_server: EtcdCluster, api_prefix: str, request: pytest.FixtureRequest
) -> Iterator[ApiHost]:
    endpoints = ",".join(str(e) for e in etcd_server.endpoints)
    with root_host_daemon(request, endpoints=endpoints, prefix=api_prefix) as host:
        yield host

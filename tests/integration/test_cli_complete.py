"""Shell completion of names, as bash asks for it, against a real `servergroup up`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from servergroup.cli.complete import TIMEOUT
from servergroup.config import load_config
from servergroup.coordination.local_etcd import LocalEtcd
from tests.fixtures.etcd import own_local_etcd_env
from tests.fixtures.setup import SetupFactory

pytestmark = pytest.mark.timeout(180)


def offered(env: dict[str, str], *words: str) -> list[str]:
    """What bash's TAB offers after `servergroup WORDS...` (the last word being typed)."""
    done = subprocess.run(
        [sys.executable, "-m", "servergroup"],
        env={
            **env,
            "_SERVERGROUP_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(["servergroup", *words]),
            "COMP_CWORD": str(len(words)),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stderr == ""
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


def test_names_in_the_store_are_offered(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1)
    setup.run("group", "create", "web")
    setup.run("group", "create", "db", "--policy", "anti-affinity")
    setup.run("server", "create", "vm1", "--group", "web")
    setup.run("server", "create", "vm2", "--group", "web")
    env = setup.env

    assert offered(env, "server", "show", "") == ["vm1", "vm2"]
    assert offered(env, "server", "stop", "vm") == ["vm1", "vm2"]
    assert offered(env, "server", "exec", "vm2") == ["vm2"]
    assert offered(env, "scale", "cpu", "down", "v") == ["vm1", "vm2"]
    assert offered(env, "group", "delete", "") == ["db", "web"]
    assert offered(env, "server", "create", "vm3", "--group", "w") == ["web"]
    assert offered(env, "server", "migrate", "vm1", "--to", "") == ["h1"]
    assert offered(env, "host", "show", "") == ["h1"]
    assert offered(env, "service", "status", "") == []  # none yet
    assert offered(env, "server", "show", "x") == []


def test_without_a_running_store_nothing_is_offered_and_nothing_started(tmp_path: Path) -> None:
    env = own_local_etcd_env(tmp_path / "state")
    assert offered(env, "server", "show", "") == []
    assert LocalEtcd(load_config(env=env)).running() is None

    # An etcd that does not answer (nothing listens there): nothing, within the timeout.
    env["SERVERGROUP_ETCD_ENDPOINTS"] = f"http://127.0.0.1:{env['SERVERGROUP_ETCD_PORT']}"
    started = time.monotonic()
    assert offered(env, "group", "delete", "") == []
    assert time.monotonic() - started < TIMEOUT + 5  # the interpreter's start on a busy machine

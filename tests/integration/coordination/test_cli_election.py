"""`servergroup election` and the demo through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SG = [sys.executable, "-m", "servergroup"]


def run(args: list[str], env: dict[str, str], timeout: float = 60.0) -> Any:
    return subprocess.run(
        SG + args,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_sentence(result: Any, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("servergroup: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_endpoint_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "sg.toml"
    config.write_text("[coordination]\noperation_timeout = 1.5\n")
    # Port 1 on loopback: nothing listens there.
    result = run(
        ["--config", str(config), "--endpoints", "127.0.0.1:1", "election", "show", "svc"],
        {"SERVERGROUP_STATE_DIR": str(tmp_path / "state")},
    )
    assert_one_sentence(result, "http://127.0.0.1:1", "did not answer")


def test_malformed_endpoint_is_a_config_error(tmp_path: Path) -> None:
    result = run(
        ["--endpoints", "ftp://127.0.0.1:2379", "election", "show", "svc"],
        {"SERVERGROUP_STATE_DIR": str(tmp_path / "state")},
    )
    assert_one_sentence(result, "ftp://", "only http:// and https://")
    assert result.returncode == 2


def test_unsafe_timings_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "sg.toml"
    config.write_text("[coordination]\nlease_ttl = 1\nrenew_interval = 0.5\n")
    result = run(["--config", str(config), "election", "show", "svc"], {})
    assert_one_sentence(result, "unsafe timings")


def test_show_reports_the_owner(etcd_server: Any, etcd_prefix: str, daemon: Any) -> None:
    env = {
        "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in etcd_server.endpoints),
        "SERVERGROUP_PREFIX": etcd_prefix,
    }
    before = run(["election", "show", "svc", "--json"], env)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == {"key": "svc", "owner": None, "token": None}
    contender = daemon(
        [*SG, "election", "contend", "svc", "--name", "solo"],
        env=env,
        name="solo",
        ready=r'"event": "acquired"',
    )
    after = run(["election", "show", "svc", "--json"], env)
    shown = json.loads(after.stdout)
    assert shown["owner"] == "solo"
    assert isinstance(shown["token"], int)
    contender.stop()
    gone = run(["election", "show", "svc"], env)
    assert gone.stdout.strip() == "svc: no owner"


def test_demo_shows_a_takeover(tmp_path: Path, etcd_server: Any, etcd_prefix: str) -> None:
    env = {
        "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in etcd_server.endpoints),
        "SERVERGROUP_PREFIX": etcd_prefix,
    }
    result = run(["demo"], env, timeout=90.0)
    assert result.returncode == 0, result.stderr
    assert "took over with token" in result.stdout
    assert "refused" in result.stdout

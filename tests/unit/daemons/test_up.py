"""`servergroup up` with a configured etcd cluster: what it refuses before touching anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servergroup.common.errors import LocalError
from servergroup.config import Config, CoordinationConfig, parse_endpoints
from servergroup.daemons.up import UpStatus, _host_env, read_status, up


def configured(
    tmp_path: Path, endpoints: str, ca_file: str = "", cert_file: str = "", key_file: str = ""
) -> Config:
    coordination = CoordinationConfig(
        endpoints=parse_endpoints(endpoints),
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    ).validate()
    return Config(state_dir=tmp_path, coordination=coordination)


def test_a_cluster_on_loopback_is_refused_lab_hosts_cannot_reach_it(tmp_path: Path) -> None:
    with pytest.raises(LocalError, match=r"http://127\.0\.0\.1:2379 is on loopback, which the lab"):
        up(configured(tmp_path, "http://127.0.0.1:2379"))
    assert not (tmp_path / "up").exists()


def test_another_etcd_than_the_one_up_runs_on_is_refused(tmp_path: Path) -> None:
    status = UpStatus(
        lab="sg",
        state_dir=str(tmp_path),
        etcd="http://127.0.0.1:12379",
        etcd_for_hosts="http://198.18.0.1:12379",
        prefix="/servergroup/v1/",
        started_etcd=True,
        hosts=(),
    )
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "state.json").write_text(json.dumps(status.as_dict()))
    assert read_status(configured(tmp_path, "")) == status
    assert status.cluster is None
    with pytest.raises(LocalError, match=r"already up on etcd http://198\.18\.0\.1:12379"):
        up(configured(tmp_path, "https://10.0.0.1:2379"))


def test_host_daemons_get_the_tls_settings(tmp_path: Path) -> None:
    tls = {"ca_file": "/c/ca.crt", "cert_file": "/c/sg.crt", "key_file": "/c/sg.key"}
    env = _host_env(configured(tmp_path, "https://10.0.0.1:2379", **tls))
    assert (env["SERVERGROUP_ETCD_CA"], env["SERVERGROUP_ETCD_CERT"]) == ("/c/ca.crt", "/c/sg.crt")
    assert (env["SERVERGROUP_ETCD_KEY"], env["SERVERGROUP_ETCD_INSECURE"]) == ("/c/sg.key", "0")
    # The managed etcd serves the lab bridge's root address in plain http.
    assert _host_env(configured(tmp_path, ""))["SERVERGROUP_ETCD_INSECURE"] == "1"

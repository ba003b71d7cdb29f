"""Where `image send|receive` record: the configured etcd, a running local one, or none."""

from __future__ import annotations

from pathlib import Path

from servergroup.config import load_config, parse_endpoints
from servergroup.transfers import recording_endpoints


def test_the_configured_cluster(tmp_path: Path) -> None:
    config = load_config(
        None,
        overrides={
            "": {"state_dir": tmp_path},
            "coordination": {"endpoints": "http://127.0.0.1:2379,http://127.0.0.2:2379"},
        },
    )
    assert recording_endpoints(config) == parse_endpoints(
        "http://127.0.0.1:2379,http://127.0.0.2:2379"
    )


def test_no_cluster_and_no_local_etcd_running_records_nowhere_and_starts_none(
    tmp_path: Path,
) -> None:
    config = load_config(None, overrides={"": {"state_dir": tmp_path}})
    assert recording_endpoints(config) == ()
    assert not (tmp_path / "etcd" / "data").exists()  # nothing was started

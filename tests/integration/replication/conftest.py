"""What the replication tests on lab hosts share: a three-host lab with etcd on its bridge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servergroup.coordination.etcd_process import EtcdCluster, EtcdProcess, cluster_specs
from servergroup.lab import Lab
from tests.fixtures.daemons import show_log_on_failure
from tests.fixtures.etcd import run_test_cluster
from tests.fixtures.lab import LabFactory


@pytest.fixture
def lab_etcd(lab: LabFactory, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """(lab of h1..h3, its status, a one-member etcd on the root namespace's bridge address)."""
    made: Lab = lab(3)
    status = made.status()
    assert status is not None
    specs = cluster_specs(tmp_path / "etcd", 1, host=str(status.root_address), tuned=True)
    cluster = EtcdCluster([EtcdProcess(s, log_path=tmp_path / f"{s.name}.log") for s in specs])
    for member in cluster.members:
        show_log_on_failure(request.node, "etcd", member.log_path)
    runner = run_test_cluster(cluster)
    next(runner)
    try:
        yield made, status, cluster
    finally:
        next(runner, None)

"""The replication part of `servergroup demo`, run on its own against the shared etcd."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from servergroup.config import load_config
from servergroup.coordination.connect import connect
from servergroup.demo import run_replication_demo
from servergroup.replication.pair import PREFIX

pytestmark = pytest.mark.timeout(120)


def test_the_demo_part_loses_no_acknowledged_put_and_removes_its_pair(
    etcd_server: Any, etcd_prefix: str, tmp_path: Path
) -> None:
    config = load_config(
        env={
            "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in etcd_server.endpoints),
            "SERVERGROUP_PREFIX": etcd_prefix,
            "SERVERGROUP_STATE_DIR": str(tmp_path / "state"),
        }
    )
    said: list[str] = []
    result = asyncio.run(run_replication_demo(config, config.coordination.endpoints, said.append))
    assert result.acknowledged > 0
    assert result.lost == 0
    assert any("Killing the primary with SIGKILL" in line for line in said)
    assert any(f"All {result.acknowledged} acknowledged puts" in line for line in said)

    async def pairs() -> int:
        async with connect(config) as coordinator:
            return len((await coordinator.get_prefix(PREFIX)).items)

    assert asyncio.run(pairs()) == 0

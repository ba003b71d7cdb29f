"""A full store (etcd's NOSPACE alarm) is one sentence that says how to recover, not a traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from servergroup.config import CoordinationConfig
from servergroup.coordination import EtcdCoordinator, StoreFull
from servergroup.coordination.etcd_process import EtcdCluster, EtcdProcess, cluster_specs
from tests.fixtures.daemons import show_log_on_failure
from tests.fixtures.etcd import run_test_cluster

pytestmark = pytest.mark.timeout(60)

#: Far below anything real: a fresh member's database alone is a few hundred KiB.
TINY_QUOTA = 1 << 20
VALUE = b"x" * 64 * 1024


@pytest.fixture
def tiny_etcd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member whose backend quota is 1 MiB."""
    (spec,) = cluster_specs(tmp_path / "data", 1, name_prefix="tiny")
    member = EtcdProcess(
        replace(spec, quota_backend_bytes=TINY_QUOTA), log_path=tmp_path / "tiny.log"
    )
    show_log_on_failure(request.node, "etcd member tiny", member.log_path)
    yield from run_test_cluster(EtcdCluster([member]))


async def fill(coordinator: EtcdCoordinator) -> None:
    """Put to one key, as broadcasts do, until the store refuses: the history alone fills it."""
    for i in range(10 * TINY_QUOTA // len(VALUE)):
        await coordinator.put("broadcasts/g", VALUE + str(i).encode())


def etcdctl(endpoint: str, *args: str) -> str:
    done = subprocess.run(
        ["etcdctl", f"--endpoints={endpoint}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout


async def test_filling_the_store_gives_store_full_with_the_way_out(
    tiny_etcd: EtcdCluster, etcd_prefix: str
) -> None:
    config = CoordinationConfig()
    async with EtcdCoordinator(tiny_etcd.endpoints, prefix=etcd_prefix, config=config) as c:
        with pytest.raises(StoreFull) as caught:
            await fill(c)
        message = str(caught.value)
        assert "space quota" in message
        assert "NOSPACE" in message
        for step in ("compact", "defrag", "alarm disarm"):
            assert step in message
        assert "\n" not in message
        # Said at once: no other member can do better, so no retrying until the deadline.
        assert "did not answer" not in message
        # Reads still work while the alarm is raised.
        assert await c.get("broadcasts/g") is not None

        # The way out the message gives works: compact, defragment, disarm.
        endpoint = str(tiny_etcd.endpoints[0])
        status = json.loads(
            await asyncio.to_thread(etcdctl, endpoint, "endpoint", "status", "-w", "json")
        )
        revision = status[0]["Status"]["header"]["revision"]
        for args in (["compact", str(revision)], ["defrag"], ["alarm", "disarm"]):
            await asyncio.to_thread(etcdctl, endpoint, *args)
        await c.put("broadcasts/g", b"after recovery")

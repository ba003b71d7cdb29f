"""`connect(config)`: endpoints, prefix and timings resolved in one place, against a real etcd."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from servergroup.common.errors import UsageError
from servergroup.config import Config, CoordinationConfig
from servergroup.coordination import connect


async def test_configured_endpoints_and_prefix(etcd_server: Any, etcd_prefix: str) -> None:
    config = CoordinationConfig(endpoints=tuple(etcd_server.endpoints), prefix=etcd_prefix)
    async with connect(config) as c, connect(config, prefix=etcd_prefix + "other/") as other:
        assert c.prefix == etcd_prefix
        await c.put("k", b"v")
        kv = await c.get("k")
        assert kv is not None
        assert kv.value == b"v"
        # A caller may name another prefix: the key above is not under it.
        assert await other.get("k") is None
        await c.delete_prefix("")


async def test_a_whole_config_with_endpoints_starts_no_local_etcd(
    etcd_server: Any, etcd_prefix: str, tmp_path: Path
) -> None:
    coordination = CoordinationConfig(endpoints=tuple(etcd_server.endpoints), prefix=etcd_prefix)
    config = Config(state_dir=tmp_path / "state", coordination=coordination)
    async with connect(config) as c:
        await c.put("seen", b"1")
        assert await c.get("seen") is not None
        await c.delete_prefix("")
    assert not (tmp_path / "state").exists()  # no managed etcd was started for it


async def test_endpoints_given_win_over_the_configured_ones(
    etcd_server: Any, etcd_prefix: str
) -> None:
    nowhere = CoordinationConfig(prefix=etcd_prefix)
    elsewhere = replace(nowhere, endpoints=tuple(etcd_server.endpoints))
    async with connect(nowhere, endpoints=elsewhere.endpoints) as c:
        await c.put("x", b"1")
        await c.delete_prefix("")


def test_a_coordination_config_alone_needs_an_endpoint() -> None:
    with pytest.raises(UsageError, match="no etcd endpoint"):
        connect(CoordinationConfig())

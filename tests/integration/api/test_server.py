"""`ApiServer`, the component, in this process: a port in use, a bad token file, stop.

The routes are tested against a real host daemon (test_api.py); here the
component's own behaviour around its socket and token file, with an
in-memory store behind it (no route here reads the store).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from servergroup.api.server import ApiServer
from servergroup.common.component import HealthState
from servergroup.common.errors import ConfigError
from servergroup.config import ApiConfig
from servergroup.coordination.memory import MemoryCoordinator, MemoryStore

pytestmark = pytest.mark.timeout(60)


def api_server(settings: ApiConfig) -> ApiServer:
    return ApiServer(
        settings,
        coordinator=MemoryCoordinator(MemoryStore()),
        host="h1",
        health=dict,
        operation_timeout=1.0,
        retry_interval=0.05,
    )


async def test_a_port_in_use_degrades_the_api_until_it_is_free() -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    server = api_server(ApiConfig(port=port))
    try:
        await server.start()  # does not fail: the host's other components matter more
        health = server.health()
        assert health.state is HealthState.DEGRADED
        assert f"port {port} on 127.0.0.1 is in use" in health.sentence
        holder.close()
        async with asyncio.timeout(10):
            while server.health().state is not HealthState.HEALTHY:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answer = await client.get("/health")
        assert answer.status_code == 200
        assert answer.json() == {"host": "h1", "components": {}}
    finally:
        holder.close()
        await server.stop()
    assert server.health().state is HealthState.STOPPED
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/health")


async def test_an_unreadable_token_file_refuses_the_start(tmp_path: Path) -> None:
    server = api_server(ApiConfig(port=0, token_file=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="cannot read the API token file"):
        await server.start()
    await server.stop()  # idempotent, after a failed start too


async def test_stop_ends_a_request_in_flight_and_returns() -> None:
    """A client that keeps its connection open does not hold the daemon's stop."""
    server = api_server(ApiConfig(port=0))
    await server.start()
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    async with asyncio.timeout(10):
        await server.stop()
    writer.close()
    assert server.health().state is HealthState.STOPPED


async def test_off_loopback_every_read_needs_the_token(tmp_path: Path) -> None:
    """Bound to every address (not loopback): reads need the token too; the schema does not."""
    token_file = tmp_path / "token"
    token_file.write_text("tok-" + "x" * 20 + "\n")
    server = api_server(ApiConfig(bind="0.0.0.0", port=0, token_file=str(token_file)))
    await server.start()
    try:
        assert server.address is not None
        url = f"http://127.0.0.1:{server.address[1]}"
        async with httpx.AsyncClient(base_url=url) as client:
            for path in ("/health", "/metrics", "/hosts"):
                answer = await client.get(path)
                assert answer.status_code == 401, (path, answer.text)
            assert (await client.get("/openapi.json")).status_code == 200
            good = {"Authorization": "Bearer tok-" + "x" * 20}
            answer = await client.get("/metrics", headers=good)
            assert answer.status_code == 200
            assert "servergroup_nacks_total" in answer.text
        assert "reads and actions need the bearer token" in server.health().sentence
    finally:
        await server.stop()

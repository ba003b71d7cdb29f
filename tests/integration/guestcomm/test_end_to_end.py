"""A real guest agent (its own namespace) and an in-process relay, joined as the lab joins
them: the channel directory holds a symlink to the guest's channel socket."""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servergroup.guestcomm.protocol import SERVER_GROUP_ADDR, Envelope, JsonObject
from servergroup.guestcomm.relay import ChannelRelay
from tests.fixtures import wait
from tests.integration.guestcomm.conftest import GuestUnderTest, log_count

WAIT = 10.0
INSTANCE = "instance-0000e2e0"
eventually = functools.partial(wait.eventually, timeout=WAIT)


@pytest.fixture
async def relay(guest: GuestUnderTest, short_dir: Path) -> AsyncIterator[ChannelRelay]:
    channel_dir = short_dir / "host-channels"
    channel_dir.mkdir()
    (channel_dir / f"cgcs.messaging.{INSTANCE}.sock").symlink_to(guest.channel)
    relay = ChannelRelay(channel_dir, address=f"t.{secrets.token_hex(4)}", retry_interval=0.1)
    await relay.start()
    yield relay
    await relay.stop()


async def app_receive(app_sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(app_sock, 65536), WAIT)


async def round_trip(guest: GuestUnderTest, relay: ChannelRelay, n: int) -> None:
    routed: asyncio.Queue[tuple[str, Envelope]] = asyncio.Queue()
    unroute = relay.route(SERVER_GROUP_ADDR, lambda i, e: routed.put_nowait((i, e)))
    try:
        app = guest.app(SERVER_GROUP_ADDR)
        app.sock.setblocking(False)
        query: JsonObject = {"version": 2, "msg_type": "status_query", "seq": n}
        app.sock.sendto(
            json.dumps({"version": 2, "dest_addr": SERVER_GROUP_ADDR, "data": query}).encode(),
            b"\0cgcs.messaging",
        )
        instance, env = await asyncio.wait_for(routed.get(), WAIT)
        assert instance == INSTANCE
        assert env == Envelope(
            dest_addr=SERVER_GROUP_ADDR,
            source_addr=SERVER_GROUP_ADDR,
            source_instance=INSTANCE,
            data=query,
        )
        done: JsonObject = {"version": 2, "msg_type": "status_response_done", "seq": n}
        assert await relay.send_to_guest(
            INSTANCE,
            Envelope(dest_addr=SERVER_GROUP_ADDR, source_addr=SERVER_GROUP_ADDR, data=done),
        )
        assert await app_receive(app.sock) == (
            b'{"version":2,"source_addr":"cgcs.server_grp","data":'
            + json.dumps(done, separators=(",", ":")).encode()
            + b"}"
        )
        app.sock.close()
    finally:
        unroute()


async def test_app_to_host_service_and_back(guest: GuestUnderTest, relay: ChannelRelay) -> None:
    await eventually(lambda: relay.connected() == {INSTANCE}, "the relay to connect")
    await round_trip(guest, relay, 1)


async def test_the_relay_reconnects_by_itself_after_the_agent_restarts(
    guest: GuestUnderTest, relay: ChannelRelay
) -> None:
    changes: list[bool] = []
    relay.on_change(lambda i, c: changes.append(c))
    await eventually(lambda: relay.connected() == {INSTANCE}, "the relay to connect")
    await round_trip(guest, relay, 1)
    await asyncio.to_thread(guest.daemon.stop)
    await eventually(lambda: relay.connected() == frozenset(), "the relay to see the agent go")
    await asyncio.to_thread(guest.start)
    await eventually(lambda: relay.connected() == {INSTANCE}, "the relay to reconnect")
    await round_trip(guest, relay, 2)
    await asyncio.to_thread(guest.daemon.kill)  # no clean-up at all this time
    await eventually(lambda: relay.connected() == frozenset(), "the relay to see the kill")
    await asyncio.to_thread(guest.start)
    await eventually(lambda: relay.connected() == {INSTANCE}, "the relay to reconnect again")
    await round_trip(guest, relay, 3)
    assert changes[:2] == [True, False]
    assert changes[-1] is True


async def test_live_migration_the_new_hosts_relay_takes_the_channel(
    guest: GuestUnderTest, relay: ChannelRelay, short_dir: Path
) -> None:
    await eventually(lambda: relay.connected() == {INSTANCE}, "the first relay to connect")
    target_dir = short_dir / "target-host-channels"
    target_dir.mkdir()
    link = relay.channel_dir / f"cgcs.messaging.{INSTANCE}.sock"
    target = ChannelRelay(target_dir, address=f"t.{secrets.token_hex(4)}", retry_interval=0.1)
    async with target:
        link.rename(target_dir / link.name)
        await eventually(lambda: target.connected() == {INSTANCE}, "the target relay to connect")
        await eventually(lambda: relay.connected() == frozenset(), "the source relay to let go")
        await round_trip(guest, target, 4)
    assert log_count(guest.daemon, "host connected") >= 2


async def test_socket_paths_longer_than_sun_path(guest: GuestUnderTest, short_dir: Path) -> None:
    """Deep state directories: the agent listens and the relay connects through
    paths longer than the 108 bytes a unix socket address holds."""
    deep = short_dir / ("d" * 60) / ("e" * 60)
    guest.daemon.stop()
    guest.channel = deep / "server" / "channel.sock"
    guest.start()
    assert len(bytes(guest.channel)) > 108
    assert guest.channel.exists()
    channel_dir = deep / "host-channels"
    channel_dir.mkdir(parents=True)
    (channel_dir / f"cgcs.messaging.{INSTANCE}.sock").symlink_to(guest.channel)
    relay = ChannelRelay(channel_dir, address=f"t.{secrets.token_hex(4)}", retry_interval=0.1)
    await relay.start()
    try:
        await eventually(lambda: relay.connected() == {INSTANCE}, "the relay to connect")
        await round_trip(guest, relay, 7)
    finally:
        await relay.stop()

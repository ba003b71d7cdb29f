"""The client front: addresses, and dispatch that a closed gate holds back."""

from __future__ import annotations

import asyncio

import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.front import ClientFront, parse_address


def test_addresses() -> None:
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("127.0.0.1", ":80", "host:", "host:99999", "host:x"):
        with pytest.raises(UsageError, match="HOST:PORT"):
            parse_address(bad)


@pytest.mark.timeout(10)
def test_a_closed_gate_holds_requests_and_concurrent_clients_get_their_own_replies() -> None:
    async def main() -> None:
        handled: list[bytes] = []
        front: ClientFront

        def handle(request: bytes) -> bytes:
            handled.append(request)
            return b"re:" + request

        front = ClientFront(handle, lambda conn, data: front.send(conn, data))
        host, port = await front.start("127.0.0.1", 0)
        try:
            front.pause()
            pairs = [await asyncio.open_connection(host, port) for _ in range(5)]
            for n, (_, writer) in enumerate(pairs):
                writer.write(f"r{n}\n".encode())
                await writer.drain()
            await asyncio.sleep(0.1)  # time for the front to read them: none may be handled
            assert handled == []
            front.resume()
            replies = [await reader.readline() for reader, _ in pairs]
            assert replies == [f"re:r{n}\n".encode() for n in range(5)]
            assert sorted(handled) == [f"r{n}".encode() for n in range(5)]
            for _, writer in pairs:
                writer.close()
        finally:
            await front.close()
        blocker = ClientFront(handle, lambda conn, data: None)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        taken = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(UsageError, match="cannot serve clients"):
                await blocker.start("127.0.0.1", taken)
        finally:
            server.close()

    asyncio.run(main())

"""The client front: addresses, and dispatch that a closed gate holds back."""

from __future__ import annotations

import asyncio

import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.front import MAX_LINE, YIELD_EVERY, ClientFront, parse_address


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


@pytest.mark.timeout(10)
def test_a_client_with_many_buffered_requests_lets_the_loop_run_other_work() -> None:
    """Pipelined requests already read are served in bursts of YIELD_EVERY, not all at once.

    A ticker task on the same loop counts its turns; the handler notes the
    count at each request. Without the yield, every request buffered at
    resume was handled with the ticker never running (heartbeats and the
    lease renewal starved the same way).
    """

    async def main() -> None:
        ticks = 0
        seen: list[int] = []
        front: ClientFront

        def handle(request: bytes) -> bytes:
            seen.append(ticks)
            return b"ok"

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        front = ClientFront(handle, lambda conn, data: front.send(conn, data))
        host, port = await front.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            front.pause()  # the requests pile up in the front's buffer
            writer.write(b"r\n" * (4 * YIELD_EVERY))
            await writer.drain()
            await asyncio.sleep(0.1)
            task = asyncio.create_task(ticker())
            front.resume()
            for _ in range(4 * YIELD_EVERY):
                assert await reader.readline() == b"ok\n"
            task.cancel()
            bursts = [seen[at : at + YIELD_EVERY] for at in range(0, len(seen), YIELD_EVERY)]
            assert all(len(set(burst)) == 1 for burst in bursts)  # a burst runs alone
            assert len({burst[0] for burst in bursts}) == len(bursts)  # the ticker ran between
        finally:
            writer.close()
            await front.close()

    asyncio.run(main())


@pytest.mark.timeout(10)
@pytest.mark.parametrize("held", [False, True])
def test_a_client_that_ends_its_side_still_gets_every_reply_then_the_end(held: bool) -> None:
    """A half-close (`printf ... | nc -N`) after the requests: all replies come, then EOF.

    `held`: the driver holds the replies, as a protected primary holds an
    epoch's output, and releases them later in one piece; else it sends
    each at once, as an unprotected primary does.
    """

    async def main() -> None:
        front: ClientFront
        waiting: list[tuple[int, bytes]] = []
        all_handled = asyncio.Event()

        def on_reply(conn: int, data: bytes) -> None:
            if held:
                waiting.append((conn, data))
                if len(waiting) == 3:
                    all_handled.set()
            else:
                front.send(conn, data)

        front = ClientFront(lambda request: b"re:" + request, on_reply)
        host, port = await front.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"a\nb\nc\n")
            writer.write_eof()
            if held:
                await asyncio.wait_for(all_handled.wait(), 5)
                await asyncio.sleep(0.1)  # time to read the end of its stream: it must stay open
                assert front.clients == 1  # still owed its replies
                conn = waiting[0][0]
                front.send(conn, b"".join(data for _, data in waiting))  # the epoch commits
            replies = await asyncio.wait_for(reader.read(), 5)
            assert replies == b"re:a\nre:b\nre:c\n"  # then the end of the stream
            assert front.clients == 0
            writer.close()
        finally:
            await front.close()

    asyncio.run(main())


@pytest.mark.timeout(20)
@pytest.mark.parametrize("held", [False, True])
def test_a_line_over_the_limit_is_answered_by_the_service_and_the_client_served_on(
    held: bool,
) -> None:
    """Over `MAX_LINE`: `too_long`'s reply, in order among the others; never `handle`.

    The long lines are written in pieces (one exactly at the limit's edge, one
    several times the reader's buffer) and the last has no newline before the
    client ends its side: it is answered too. `held` as above.
    """

    async def main() -> None:
        front: ClientFront
        handled: list[bytes] = []
        waiting: list[tuple[int, bytes]] = []

        def handle(request: bytes) -> bytes:
            handled.append(request)
            return b"re:" + request

        def on_reply(conn: int, data: bytes) -> None:
            if held:
                waiting.append((conn, data))
                if len(waiting) == 6:
                    front.send(conn, b"".join(data for _, data in waiting))
            else:
                front.send(conn, data)

        front = ClientFront(
            handle, on_reply, too_long=lambda limit: f"too long: over {limit}".encode()
        )
        host, port = await front.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"a\n")
            writer.write(b"x" * (MAX_LINE + 1) + b"\n")  # one byte over
            writer.write(b"b\n")
            for _ in range(5):  # 5 * MAX_LINE in pieces, then its newline
                writer.write(b"y" * MAX_LINE)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"\nc\n")
            writer.write(b"z" * (3 * MAX_LINE))  # the last line: no newline, then the end
            writer.write_eof()
            replies = await asyncio.wait_for(reader.read(), 10)
            over = f"too long: over {MAX_LINE}\n".encode()
            assert replies == b"re:a\n" + over + b"re:b\n" + over + b"re:c\n" + over
            assert handled == [b"a", b"b", b"c"]
            writer.close()
        finally:
            await front.close()

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_a_line_over_the_limit_closes_the_client_of_a_service_without_too_long() -> None:
    async def main() -> None:
        front: ClientFront
        front = ClientFront(lambda request: b"re:" + request, lambda c, d: front.send(c, d))
        host, port = await front.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"a\n" + b"x" * (MAX_LINE + 1) + b"\nb\n")
            assert await asyncio.wait_for(reader.read(), 5) == b"re:a\n"
            writer.close()
        finally:
            await front.close()

    asyncio.run(main())

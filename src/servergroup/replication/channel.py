"""The channels between a primary and its backup: checkpoint stream and heartbeats.

Theory of operation. A `Channel` carries replication messages
(`replication.protocol`) one way and the other, in order, and nothing else
decides anything here (the machines do). Two implementations, one contract
suite (tests/integration/replication/test_channel_contract.py):

- `TcpChannel`: asyncio streams. `send` writes each message's frame parts
  with `writelines` (on CPython 3.11 the transport joins them into one
  buffer per frame, a copy of the page data; 3.12 sends the list as it is)
  and waits for the transport to drain, so a slow peer pushes back on the
  sender.
  `receive` reads chunks into a `MessageDecoder`. Sends are serialised by a
  lock: the messages of one `send` stay together on the wire, which keeps an
  epoch's frames contiguous when heartbeats or acks share a connection.
- `MemoryChannel.pair()`: two ends joined by queues, for tests of the
  drivers; messages still go through the codec, so what one end receives is
  what the wire would have carried.

Failures, as the caller sees them: the peer closed or the connection died
(`ChannelClosed`, also for a stream cut inside a frame: `cut` tells), or
the peer sent garbage (`ReplicationProtocolError`); after either the channel
is closed and every later call raises `ChannelClosed`. Timeouts are the
caller's (`asyncio.timeout`): a channel never decides that a silent peer is
dead; the heartbeat logic does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from servergroup.common.errors import RemoteError
from servergroup.replication.protocol import (
    Message,
    MessageDecoder,
    ReplicationProtocolError,
    encode_parts,
)

#: Bytes asked of the socket per read.
READ_SIZE = 1024 * 1024


class ChannelClosed(RemoteError):
    """The channel is closed: by us, by the peer, or because the connection failed."""

    def __init__(self, reason: str, *, cut: bool = False) -> None:
        super().__init__(reason)
        #: The stream ended inside a frame (a truncated stream).
        self.cut = cut


class Channel(Protocol):
    """An ordered two-way carrier of replication messages."""

    @property
    def peer(self) -> str:
        """Who is at the other end, for logs."""

    async def send(self, messages: Sequence[Message]) -> None:
        """Write `messages` in order, together; returns once the transport took them."""

    async def receive(self) -> Message:
        """The next message; raises `ChannelClosed` or `ReplicationProtocolError`.

        Once the channel is closed (here, by the peer, or by a failure), nothing
        more is delivered, not even what was already read.
        """

    async def close(self) -> None:
        """Close; idempotent."""


class TcpChannel:
    """A `Channel` on an asyncio TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = MessageDecoder()
        self._ready: list[Message] = []
        self._lock = asyncio.Lock()
        self._closed: ChannelClosed | None = None
        address = writer.get_extra_info("peername")
        self._peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)

    @property
    def peer(self) -> str:
        return self._peer

    async def send(self, messages: Sequence[Message]) -> None:
        if self._closed is not None:
            raise self._closed
        async with self._lock:
            try:
                for message in messages:
                    self._writer.writelines(encode_parts(message))
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                failure = ChannelClosed(f"sending to {self._peer} failed: {exc}")
                await self._fail(failure)
                raise failure from exc

    async def receive(self) -> Message:
        while True:
            # Closed is closed: what was read but not yet taken is not delivered either
            # (a stream replaced while its reader waited must feed nothing more).
            if self._closed is not None:
                raise self._closed
            if self._ready:
                return self._ready.pop(0)
            try:
                chunk = await self._reader.read(READ_SIZE)
            except (ConnectionError, OSError) as exc:
                await self._fail(ChannelClosed(f"the connection to {self._peer} failed: {exc}"))
                continue
            if not chunk:
                cut = self._decoder.pending > 0
                reason = f"{self._peer} closed the stream" + (" inside a frame" if cut else "")
                await self._fail(ChannelClosed(reason, cut=cut))
                continue
            try:
                self._ready = self._decoder.feed(chunk)
            except ReplicationProtocolError as exc:
                await self._fail(ChannelClosed(f"{self._peer} sent garbage: {exc}"))
                raise

    async def _fail(self, reason: ChannelClosed) -> None:
        if self._closed is None:
            self._closed = reason
        await self._shut()

    async def close(self) -> None:
        if self._closed is None:
            self._closed = ChannelClosed("the channel was closed here")
        await self._shut()

    async def _shut(self) -> None:
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


async def connect(host: str, port: int, *, timeout: float) -> TcpChannel:
    """A channel to `host:port`; raises `ChannelClosed` when it cannot be opened in time."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (TimeoutError, OSError) as exc:
        # asyncio's text repeats the address ("Connect call failed (...)"): say the errno's.
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc) or "timed out"
        raise ChannelClosed(f"cannot connect to {host}:{port}: {reason}") from None
    return TcpChannel(reader, writer)


async def serve(
    host: str, port: int, on_channel: Callable[[TcpChannel], Awaitable[None]]
) -> asyncio.Server:
    """Listen on `host:port`; each connection is handed to `on_channel` as a channel.

    The channel is closed when `on_channel` returns or raises.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = TcpChannel(reader, writer)
        try:
            await on_channel(channel)
        finally:
            await channel.close()

    return await asyncio.start_server(handle, host, port, reuse_address=True)


class MemoryChannel:
    """One end of an in-memory `Channel` pair (see `pair`)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._other: MemoryChannel | None = None
        self._decoder = MessageDecoder()
        self._ready: list[Message] = []
        self._closed: ChannelClosed | None = None

    @classmethod
    def pair(cls) -> tuple[MemoryChannel, MemoryChannel]:
        left, right = cls("left"), cls("right")
        left._other, right._other = right, left
        return left, right

    @property
    def peer(self) -> str:
        return "memory:" + (self._other._name if self._other else "?")

    async def send(self, messages: Sequence[Message]) -> None:
        if self._closed is not None:
            raise self._closed
        assert self._other is not None
        if self._other._closed is not None:
            failure = ChannelClosed(f"{self.peer} is closed")
            await self._fail(failure)
            raise failure
        for message in messages:
            self._other._inbox.put_nowait(b"".join(encode_parts(message)))

    def inject(self, data: bytes) -> None:
        """Deliver raw bytes to this end as if the peer had sent them (tests)."""
        self._inbox.put_nowait(data)

    async def receive(self) -> Message:
        while True:
            if self._closed is not None:
                raise self._closed
            if self._ready:
                return self._ready.pop(0)
            chunk = await self._inbox.get()
            if chunk is None:
                cut = self._decoder.pending > 0
                await self._fail(ChannelClosed(f"{self.peer} closed the stream", cut=cut))
                continue
            try:
                self._ready = self._decoder.feed(chunk)
            except ReplicationProtocolError as exc:
                await self._fail(ChannelClosed(f"{self.peer} sent garbage: {exc}"))
                raise

    async def _fail(self, reason: ChannelClosed) -> None:
        if self._closed is None:
            self._closed = reason
            if self._other is not None:
                self._other._inbox.put_nowait(None)

    async def close(self) -> None:
        await self._fail(ChannelClosed("the channel was closed here"))

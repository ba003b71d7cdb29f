"""Run one transfer as the sender: `run_sender(config, source)` is the library API.

The driver of `sending.SenderMachine`: it accepts the clients' TCP
connections, turns their bytes into messages, reads the image, multicasts
the passes the machine asks for (in a worker thread, paced) and writes
repairs on the clients' connections, each client's output in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.errors import UsageError
from servergroup.common.logsetup import log_bug
from servergroup.multicast import sending as tx
from servergroup.multicast.config import SendConfig
from servergroup.multicast.protocol import (
    Auth,
    DataPacket,
    ProtocolError,
    StreamDecoder,
    encode_message,
)
from servergroup.multicast.rate import RateSettings
from servergroup.multicast.transport import (
    ImageReader,
    Multicaster,
    PreparedBuffer,
    TransferError,
    describe_os_error,
    multicast_sender_socket,
    prepare_buffer,
)

log = logging.getLogger(__name__)

#: A client that takes no bytes for this long while we write to it is stalled.
READ_SIZE = 256 * 1024
#: Repairs are written in batches of about this many bytes between drains.
REPAIR_BATCH = 1024 * 1024

Progress = Callable[[int, int | None], None]


@dataclass(slots=True)
class _Repairs:
    buffer_id: int
    indices: tuple[int, ...]


class _Connection:
    """One client's TCP connection: a reader task and an ordered writer task."""

    def __init__(
        self,
        driver: _Sender,
        client: tx.ClientId,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.driver = driver
        self.client = client
        self.reader = reader
        self.writer = writer
        self.queue: asyncio.Queue[bytes | _Repairs | None] = asyncio.Queue()
        self.closing = False
        self.tasks = [
            asyncio.create_task(self._read_loop(), name=f"client-{client}-read"),
            asyncio.create_task(self._write_loop(), name=f"client-{client}-write"),
        ]

    def send(self, item: bytes | _Repairs) -> None:
        if not self.closing:
            self.queue.put_nowait(item)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait(None)

    async def _read_loop(self) -> None:
        machine = self.driver.machine
        decoder = StreamDecoder(self.driver.auth)
        reason = "end of stream"
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                try:
                    packets = decoder.feed(data)
                except ProtocolError as exc:
                    self.driver.feed(partial(machine.client_misbehaved, self.client, str(exc)))
                    return
                for session, packet in packets:
                    if isinstance(packet, DataPacket) or session not in (0, self.driver.session):
                        why = "a packet of another kind or session"
                        self.driver.feed(partial(machine.client_misbehaved, self.client, why))
                        return
                    self.driver.feed(partial(machine.message_received, self.client, packet))
        except OSError as exc:
            reason = describe_os_error(exc)
        except asyncio.CancelledError:
            return
        self.driver.feed(partial(machine.client_closed, self.client, reason))

    async def _write_loop(self) -> None:
        machine = self.driver.machine
        timeout = self.driver.config.timeout
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    break
                if isinstance(item, bytes):
                    self.writer.write(item)
                    await asyncio.wait_for(self.writer.drain(), timeout)
                    continue
                buffer = self.driver.buffers.get(item.buffer_id)
                if buffer is None:
                    continue
                pending = 0
                for index in item.indices:
                    packet = buffer.packet(index)
                    self.writer.write(packet)
                    pending += len(packet)
                    if pending >= REPAIR_BATCH:
                        await asyncio.wait_for(self.writer.drain(), timeout)
                        pending = 0
                await asyncio.wait_for(self.writer.drain(), timeout)
                self.driver.feed(partial(machine.repairs_written, self.client, item.buffer_id))
        except TimeoutError:
            reason = f"it took nothing we sent for {timeout:g} s"
            self.driver.feed(partial(machine.client_closed, self.client, reason))
        except OSError as exc:
            reason = describe_os_error(exc)
            self.driver.feed(partial(machine.client_closed, self.client, reason))
        except asyncio.CancelledError:
            pass
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class _Sender:
    def __init__(
        self,
        config: SendConfig,
        source: BinaryIO,
        clock: Clock,
        progress: Progress | None,
        *,
        metrics: bool,
    ) -> None:
        self.config = config
        self.clock = clock
        self.progress = progress
        self.metrics = metrics
        self.session = secrets.randbits(32) or 1
        self.auth = Auth(config.key) if config.key is not None else None
        self.machine = tx.SenderMachine(
            tx.SenderSettings(
                session=self.session,
                expected_clients=config.clients,
                group=config.group,
                port=config.port,
                payload_size=config.payload_size,
                buffer_packets=config.buffer_packets,
                timeout=config.timeout,
                join_timeout=config.join_timeout,
                rate=RateSettings(cap=config.rate)
                if config.rate is None
                else RateSettings(cap=config.rate, initial=config.rate),
            )
        )
        self.reader = ImageReader(source)
        self.buffers: dict[int, PreparedBuffer] = {}
        self.connections: dict[tx.ClientId, _Connection] = {}
        self.next_client = 1
        self.done: asyncio.Future[tx.SenderReport] = asyncio.get_running_loop().create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.stop = threading.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.sock = multicast_sender_socket(config.local_ip)
        self.multicaster = Multicaster(self.sock, (str(config.group), config.port))
        self.completed_bytes = 0
        self.size_hint = source_size(source)

    # --- feeding the machine ----------------------------------------------------------

    def feed(self, step: Callable[[float], list[tx.Output]]) -> None:
        """Run one input of the machine now, carry out what it returns, re-arm the timer."""
        if self.done.done():
            return
        try:
            self._apply(step(self.clock.monotonic()))
        except TransferError as exc:
            self.done.set_exception(exc)
            return
        except Exception:
            log_bug(log, "the sender's loop")
            self.done.set_exception(TransferError("the sender failed unexpectedly (a bug)."))
            return
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = self.machine.next_timer()
        if when is not None and not self.done.done():
            delay = max(0.0, when - self.clock.monotonic())
            self.timer = asyncio.get_running_loop().call_later(
                delay, self.feed, self.machine.handle_timer
            )

    def _apply(self, outputs: list[tx.Output]) -> None:
        for action in outputs:
            match action:
                case tx.SendTo(client=client, message=message):
                    conn = self.connections.get(client)
                    if conn is not None:
                        conn.send(encode_message(message, self.session, self.auth))
                case tx.SendRepairs(client=client, buffer_id=buffer_id, indices=indices):
                    conn = self.connections.get(client)
                    if conn is not None:
                        conn.send(_Repairs(buffer_id=buffer_id, indices=indices))
                case tx.Multicast():
                    self._spawn(self._multicast(action))
                case tx.Disconnect(client=client):
                    conn = self.connections.get(client)
                    if conn is not None:
                        conn.close()
                case tx.LoadBuffer(buffer_id=buffer_id):
                    self._spawn(self._load(buffer_id))
                case tx.ReleaseBuffer(buffer_id=buffer_id):
                    self.buffers.pop(buffer_id, None)
                case tx.Finished(report=report):
                    self.done.set_result(report)
                case tx.ClientJoined(name=name, address=address):
                    log.info("client %s (%s) joined", name, address)
                case tx.ClientDropped(name=name, reason=reason):
                    log.warning("client %s dropped: %s", name, reason)
                case tx.BufferCompleted():
                    self.completed_bytes += action.byte_length
                    if self.metrics:
                        _count(action)
                    log.info(
                        "buffer %d done: %d bytes, %d pass(es), %d packet(s) repaired over TCP, "
                        "next rate %.0f Mbit/s, %d client(s)",
                        action.buffer_id,
                        action.byte_length,
                        action.passes,
                        action.repaired,
                        action.rate / 1e6,
                        action.clients,
                    )
                    if self.progress is not None:
                        self.progress(self.completed_bytes, self.size_hint)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- work in threads --------------------------------------------------------------

    async def _load(self, buffer_id: int) -> None:
        config = self.config
        size = config.payload_size * config.buffer_packets
        try:
            data = await asyncio.to_thread(self.reader.read, size)
            if data:
                buffer = await asyncio.to_thread(
                    prepare_buffer, self.session, buffer_id, data, config.payload_size, self.auth
                )
                self.buffers[buffer_id] = buffer
                info = tx.LoadedBuffer(
                    buffer_id=buffer_id, packet_count=buffer.packet_count, byte_length=len(data)
                )
            else:
                info = tx.LoadedBuffer(
                    buffer_id=buffer_id,
                    packet_count=0,
                    byte_length=0,
                    total_bytes=self.reader.total,
                    digest=self.reader.digest(),
                )
        except TransferError as exc:
            if not self.done.done():
                self.done.set_exception(exc)
            return
        self.feed(partial(self.machine.buffer_loaded, info))

    async def _multicast(self, m: tx.Multicast) -> None:
        buffer = self.buffers[m.buffer_id]
        try:
            elapsed = await asyncio.to_thread(
                self.multicaster.send_pass, buffer, m.indices, m.rate, self.stop
            )
        except TransferError as exc:
            if not self.done.done():
                self.done.set_exception(exc)
            return
        self.feed(partial(self.machine.multicast_sent, m.buffer_id, m.pass_number, elapsed))

    # --- connections ------------------------------------------------------------------

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = self.next_client
        self.next_client += 1
        peer = writer.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.connections[client] = _Connection(self, client, reader, writer)
        self.feed(partial(self.machine.client_connected, client, address))

    async def run(self) -> tx.SenderReport:
        try:
            server = await asyncio.start_server(
                self.on_connect, host="0.0.0.0", port=self.config.port, reuse_address=True
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {self.config.port} is in use; choose another.") from None
            raise TransferError(
                f"cannot listen on port {self.config.port}: {describe_os_error(exc)}"
            ) from None
        log.info(
            "sending to %d client(s) via %s:%d from %s, session %#010x",
            self.config.clients,
            self.config.group,
            self.config.port,
            self.config.local_ip,
            self.session,
        )
        try:
            self.feed(self.machine.start)
            return await self.done
        finally:
            await self._shut_down(server)

    async def _shut_down(self, server: asyncio.Server) -> None:
        self.stop.set()
        if self.timer is not None:
            self.timer.cancel()
        server.close()
        for conn in self.connections.values():
            conn.close()
        writers = [conn.tasks[1] for conn in self.connections.values()]
        if writers:
            await asyncio.wait(writers, timeout=2.0)
        for conn in self.connections.values():
            for task in conn.tasks:
                task.cancel()
        for task in list(self.tasks):
            task.cancel()
        pending = [t for c in self.connections.values() for t in c.tasks] + list(self.tasks)
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        self.sock.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)


def source_size(source: BinaryIO) -> int | None:
    """The size of `source` when it is a regular file (known before it is read), else None."""
    try:
        info = os.fstat(source.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


async def run_sender(
    config: SendConfig,
    source: BinaryIO,
    *,
    clock: Clock | None = None,
    progress: Progress | None = None,
    metrics: bool = True,
) -> tx.SenderReport:
    """Send the image read from `source` to `config.clients` receivers; the report says how.

    Raises `UsageError` for a bad local address or a busy port and
    `TransferError` when the network or the input fails; a client that fails
    is not an exception, it is a row of the report. `metrics=False` leaves
    this process's Prometheus metrics alone, and prometheus_client unloaded
    (~25 ms of every sender's start, on the transfer's clock).
    """
    sender = _Sender(config, source, clock or SystemClock(), progress, metrics=metrics)
    return await sender.run()


def _count(done: tx.BufferCompleted) -> None:
    """Add a confirmed buffer to the process's transfer metrics."""
    from servergroup.common import metrics

    metrics.TRANSFER_BYTES.inc(done.byte_length)
    metrics.TRANSFER_REPAIRS.inc(done.repaired)
    metrics.TRANSFER_RATE.set(done.rate / 8)  # the machine's rate is in bit/s

"""Run one transfer as a receiver: `run_receiver(config, sink)` is the library API.

The driver of `receiving.ReceiverMachine`: it connects to the sender
(retrying until `timeout` while the sender is not up yet), feeds the
connection's bytes and the multicast datagrams to the machine, and writes
the buffers it hands over, in order, in one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from ipaddress import IPv4Address

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.errors import phrase
from servergroup.common.logsetup import log_bug
from servergroup.multicast import receiving as rx
from servergroup.multicast.config import ReceiveConfig
from servergroup.multicast.protocol import (
    DATA_HEADER_SIZE,
    Auth,
    DataPacket,
    ProtocolError,
    Sent,
    StreamDecoder,
    encode_message,
)
from servergroup.multicast.transport import (
    RECEIVE_SPACE,
    ScatterReceiver,
    Sink,
    TransferError,
    buffer_memory,
    describe_os_error,
    multicast_receiver_socket,
    scatter_receiver,
)

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
#: Datagrams per wake-up before the loop looks at the connection again.
DATAGRAM_BATCH = 512
#: A wake-up that found fewer datagrams than this waits COALESCE_DELAY before
#: the next: ~14 datagrams of 9000 bytes arrive per millisecond at 1 Gbit/s,
#: so a wake-up then finds ~220, most of one scatter receive (256); the
#: socket's buffer (64 MiB) holds far more than 16 ms of any link. Measured,
#: 512 MiB at 1 Gbit/s: 1 ms gave 4600 wake-ups of 13 datagrams, 4 ms 1600 of
#: 37 and 0.35 CPU-s less (a third of the receiver's CPU); 8 ms another ~0.08
#: less; 16 ms (with 256 per call) halves the wake-ups again.
COALESCE_BELOW = 192
COALESCE_DELAY = 0.016
#: A receiver started before its sender tries again this often: the transfer
#: starts at most this long after the sender listens (a refused attempt costs
#: a few system calls).
CONNECT_RETRY_INTERVAL = 0.05

Progress = Callable[[int, int | None], None]


class _Receiver:
    def __init__(self, config: ReceiveConfig, sink: Sink, clock: Clock, progress: Progress | None):
        self.config = config
        self.sink = sink
        self.clock = clock
        self.progress = progress
        self.auth = Auth(config.key) if config.key is not None else None
        self.machine = rx.ReceiverMachine(
            rx.ReceiverSettings(
                name=config.name, timeout=config.timeout, auth=self.auth, memory=buffer_memory
            )
        )
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[rx.ReceiverReport] = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.session = 0
        self.sock: socket.socket | None = None
        self.scatter: ScatterReceiver | None = None
        self.scratch = bytearray(RECEIVE_SPACE)
        self.disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-writer")
        self.write_tail: asyncio.Future[None] | None = None
        self.paused: asyncio.TimerHandle | None = None

    # --- feeding the machine ----------------------------------------------------------

    def feed(self, step: Callable[[float], Sequence[rx.Output]]) -> None:
        if self.done.done():
            return
        try:
            outputs = step(self.clock.monotonic())
            if outputs:
                self._apply(outputs)
        except Exception:
            log_bug(log, "the receiver's loop")
            self._fail_hard("the receiver failed unexpectedly (a bug).")
            return
        self._arm_timer()

    def _fail_hard(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(TransferError(reason))

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = self.machine.next_timer()
        if when is not None and not self.done.done():
            delay = max(0.0, when - self.clock.monotonic())
            self.timer = self.loop.call_later(delay, self.feed, self.machine.handle_timer)

    def _apply(self, outputs: Sequence[rx.Output]) -> None:
        for action in outputs:
            match action:
                case rx.Send(message=message):
                    if self.writer is not None and not self.writer.is_closing():
                        self.writer.write(encode_message(message, self.session, self.auth))
                case rx.JoinGroup(group=group, port=port):
                    self._join(group, port)
                case rx.Deliver(buffer_id=buffer_id, data=data):
                    self._deliver(buffer_id, data)
                case rx.Verify(total_bytes=total, digest=digest):
                    self._verify(total, digest)
                case rx.Close(report=report):
                    self.done.set_result(report)
                case rx.Joined(session=session, group=group, port=port):
                    self.session = session
                    log.info("joined session %#010x on %s:%d", session, group, port)
                case rx.BufferReceived(buffer_id=buffer_id, counters=c):
                    log.debug(
                        "buffer %d whole: %d by multicast, %d repaired",
                        buffer_id,
                        c.multicast,
                        c.repaired,
                    )

    # --- multicast --------------------------------------------------------------------

    def _join(self, group: IPv4Address, port: int) -> None:
        self.sock = multicast_receiver_socket(group, port, self.config.local_ip)
        self.scatter = scatter_receiver(self.sock, DATA_HEADER_SIZE)
        self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        taken = self._drain_datagrams(DATAGRAM_BATCH)
        if taken < COALESCE_BELOW and self.sock is not None and not self.done.done():
            # Few datagrams per wake-up: the event loop's round trip would cost
            # more than the datagrams. Let them gather in the socket's buffer
            # for a moment (as a NIC coalesces interrupts), then take them all.
            self.loop.remove_reader(self.sock.fileno())
            self.paused = self.loop.call_later(COALESCE_DELAY, self._resume)

    def _resume(self) -> None:
        self.paused = None
        if self.sock is not None and not self.done.done():
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._on_readable()

    def _drain_datagrams(self, limit: int | None) -> int:
        """Feed the machine what the socket holds (at most about `limit`); the datagrams.

        While a buffer is being filled, datagrams are received straight into
        it, up to 128 per system call (`ScatterReceiver`, where the machine's
        `landing` says). Otherwise (or without recvmmsg) one receive at a
        time: one receive may bring a run of datagrams coalesced by the kernel
        (UDP_GRO). GRO makes runs of one flow's equal-sized datagrams (all
        but the last), so a receive longer than one of the sender's
        datagrams is a run of them: it is cut at that size, which spares the
        ancillary data `recvmsg` would give (`recv_into` costs ~0.7 us less per
        receive, a tenth of a small datagram's whole cost).
        """
        sock = self.sock
        if sock is None or self.done.done():
            return 0
        machine = self.machine
        received = machine.datagrams_received
        full = machine.datagram_size
        receive = sock.recv_into
        scatter = self.scatter
        view = memoryview(self.scratch)
        now = self.clock.monotonic()
        taken = 0
        try:
            while limit is None or taken < limit:
                landing = machine.landing(scatter.VLEN) if scatter is not None else None
                if landing is not None and scatter is not None:
                    # Straight into the buffer, many per call.
                    lengths = scatter.receive(landing.memory, landing.slots, landing.slot_size)
                    if not lengths:
                        break
                    taken += len(lengths)
                    outputs = machine.datagrams_landed(
                        landing, lengths, scatter.headers, scatter.tails, scatter.TAIL, now
                    )
                    drained = len(lengths) < len(landing.slots)
                else:
                    try:
                        n = receive(view)
                    except (BlockingIOError, InterruptedError):
                        break
                    taken += 1
                    outputs = received(view[:n], full if n > full > 0 else n, now)
                    drained = False
                if outputs:
                    self._apply(outputs)
                    self._arm_timer()
                    if self.done.done():
                        break
                if drained:
                    break
        except OSError as exc:
            self._fail_hard(f"the multicast socket failed: {describe_os_error(exc)}")
        except Exception:
            log_bug(log, "the receiver's datagram loop")
            self._fail_hard("the receiver failed unexpectedly (a bug).")
        finally:
            view.release()
        return taken

    # --- output -----------------------------------------------------------------------

    def _deliver(self, buffer_id: int, data: memoryview) -> None:
        previous = self.write_tail

        async def write() -> None:
            if previous is not None:
                await previous
            try:
                await self.loop.run_in_executor(self.disk, self.sink.write, data)
            except TransferError as exc:
                self.feed(partial(self.machine.delivery_failed, phrase(exc)))
                return
            if self.progress is not None:
                self.progress(self.sink.written, None)
            self.feed(partial(self.machine.delivered, buffer_id, len(data)))

        self.write_tail = asyncio.ensure_future(write())

    def _verify(self, total: int, digest: bytes) -> None:
        previous = self.write_tail

        async def verify() -> None:
            if previous is not None:
                await previous
            problem = self.sink.check(total, digest)
            if not problem:
                try:
                    await self.loop.run_in_executor(self.disk, self.sink.commit)
                except TransferError as exc:
                    problem = phrase(exc)
            self.feed(partial(self.machine.verified, not problem, problem))

        self.write_tail = asyncio.ensure_future(verify())

    # --- the connection ---------------------------------------------------------------

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        config = self.config
        deadline = self.clock.monotonic() + config.timeout
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel (Ctrl-C)
                # that comes as the connect fails, and the loop would go on retrying.
                async with asyncio.timeout(max(0.1, deadline - self.clock.monotonic())):
                    return await asyncio.open_connection(
                        str(config.server_ip), config.port, local_addr=(str(config.local_ip), 0)
                    )
            except (OSError, TimeoutError) as exc:
                if self.clock.monotonic() >= deadline:
                    why = connect_failure(exc)
                    raise TransferError(
                        f"cannot reach the sender at {config.server_ip}:{config.port} "
                        f"within {config.timeout:g} s ({why})."
                    ) from None
            await self.clock.sleep(CONNECT_RETRY_INTERVAL)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = StreamDecoder(self.auth)
        reason = "end of stream"
        try:
            while not self.done.done():
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                try:
                    packets = decoder.feed(data)
                except ProtocolError as exc:
                    self.feed(partial(self.machine.protocol_error, exc))
                    return
                for session, packet in packets:
                    if isinstance(packet, DataPacket):
                        self.feed(partial(self.machine.repair_received, packet))
                        continue
                    if isinstance(packet, Sent):
                        # What multicast brought before the pass ended counts first.
                        self._drain_datagrams(None)
                    self.feed(partial(self.machine.message_received, session, packet))
        except OSError as exc:
            reason = describe_os_error(exc)
        self.feed(partial(self.machine.connection_closed, reason))

    async def run(self) -> rx.ReceiverReport:
        log.info(
            "connecting to the sender at %s:%d (for up to %g s)",
            self.config.server_ip,
            self.config.port,
            self.config.timeout,
        )
        reader, self.writer = await self._connect()
        log.info("connected to the sender at %s:%d", self.config.server_ip, self.config.port)
        read_task = asyncio.create_task(self._read_loop(reader))
        try:
            self.feed(self.machine.connected)
            return await self.done
        finally:
            await self._shut_down(read_task)

    async def _shut_down(self, read_task: asyncio.Task[None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.paused is not None:
            self.paused.cancel()
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.drain(), 1.0)
            self.writer.close()
        read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await read_task
        report = self.machine.report
        if report is None or not report.ok:
            if self.write_tail is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self.write_tail), 5.0)
            self.sink.discard()
        self.disk.shutdown(wait=False, cancel_futures=True)


def connect_failure(exc: BaseException) -> str:
    """Why a connection to the sender failed, in a few words (never empty)."""
    if isinstance(exc, TimeoutError):  # asyncio's and the kernel's (ETIMEDOUT) alike
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused: nothing listens there"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return f"no route: {describe_os_error(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_UNREACHABLE = frozenset(
    (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL)
)


async def run_receiver(
    config: ReceiveConfig,
    sink: Sink,
    *,
    clock: Clock | None = None,
    progress: Progress | None = None,
) -> rx.ReceiverReport:
    """Receive one image into `sink`; the report's `ok` is True only when it is whole and verified.

    Raises `TransferError` when the sender cannot be reached, `UsageError`
    for a local address that is not this host's.
    """
    receiver = _Receiver(config, sink, clock or SystemClock(), progress)
    return await receiver.run()

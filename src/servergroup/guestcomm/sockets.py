"""Abstract-namespace AF_UNIX datagram sockets, as the protocol's applications use them.

An abstract name starts with a NUL byte and has no trailing NUL (spec
section 1); Python passes `b"\\0" + name` with exactly that length. Names are
per network namespace. Every socket here is non-blocking: receiving waits on
the event loop, sending never waits, and the two ordinary outcomes of a
datagram send to a local application (nobody bound there, its queue full)
are results, not exceptions.

Two kernel limits decide when a send to a local socket would block
(EAGAIN). A receiver holds at most `net.unix.max_dgram_qlen` datagrams (a
per-network-namespace sysctl, 10 by default, read when the receiving socket
is created), except datagrams from the one socket it is connected to, which
the kernel does not count; and every datagram sent and not yet read counts
against its *sender's* send buffer (`SO_SNDBUF`), whoever it was sent to. A
socket that sends to many receivers (the guest agent) therefore asks for a
large send buffer, so that one receiver that does not read cannot use it all
up and stall the others; and a guest raises the queue length
(`GUEST_DGRAM_QLEN`, see `dgram_qlen`).

The coroutines here (`AbstractSocket.receive`, `serve_datagrams`) import
asyncio when first called: the guest agent uses this module from a loop of
its own and must not pay for asyncio's import at each VM boot.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from servergroup.common.errors import LocalError, UsageError
from servergroup.common.logsetup import log_bug
from servergroup.guestcomm.drops import DropLog, Reason
from servergroup.guestcomm.protocol import (
    MAX_APP_DATAGRAM,
    MAX_DATAGRAM,
    Envelope,
    ProtocolError,
    decode_envelope,
    encode_envelope,
    record_builder,
)

log = logging.getLogger(__name__)

#: Receive buffer: one byte more than the largest datagram accepted, so a
#: datagram of exactly MAX_APP_DATAGRAM + 1 bytes shows as too big without MSG_TRUNC.
RECEIVE_SIZE = MAX_APP_DATAGRAM + 1
#: A plain int: `socket.MSG_TRUNC` is an enum member, and `&` with it builds an enum each time.
_MSG_TRUNC = int(socket.MSG_TRUNC)
#: Kernel receive buffer asked for, so that bursts wait in the kernel.
RECEIVE_BUFFER = 1 << 20
#: Where the kernel keeps the datagram queue length of this network namespace.
DGRAM_QLEN_PATH = Path("/proc/sys/net/unix/max_dgram_qlen")
#: The queue length servers get (the lab driver's namespaces, the qemu guest's /init).
GUEST_DGRAM_QLEN = 1024
#: Below this an agent warns: applications are slowed by the kernel, not by their peers.
MIN_DGRAM_QLEN = 64
#: The `log_msg` of the nack a guest agent answers a server-group request with while no
#: host is connected (here, not in the agent, so that client libraries can recognise it).
NO_HOST_LOG_MSG = "no host is connected to this server's channel; the message was not sent"


class AddressInUse(LocalError):
    """The abstract name is already bound in this network namespace."""


class SendResult(Enum):
    """How a datagram send ended."""

    SENT = "sent"
    #: Nothing is bound at that name: the message is dropped (spec section 3).
    NOT_BOUND = "not bound"
    #: The receiver's queue is full: it does not read fast enough.
    WOULD_BLOCK = "would block"
    #: The kernel had no memory for the datagram (ENOBUFS): the same send may work shortly.
    NO_MEMORY = "no memory"
    #: Larger than the kernel accepts for one datagram.
    TOO_BIG = "too big"

    @property
    def later(self) -> bool:
        """Not sent now, but the same send may work later (WOULD_BLOCK, NO_MEMORY)."""
        return self in (SendResult.WOULD_BLOCK, SendResult.NO_MEMORY)


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received datagram."""

    data: bytes
    #: The sender's abstract name, or None when it is unbound or bound to a path.
    sender: str | None
    #: The datagram was larger than the receive buffer; `data` is its start.
    truncated: bool


@functools.lru_cache(maxsize=1024)
def abstract_address(name: str) -> bytes:
    """The socket address of abstract `name`: NUL, the name, no trailing NUL.

    Cached: a process sends to few names, once per datagram.
    """
    return b"\0" + name.encode("utf-8")


#: `Datagram(data, sender, truncated)`, made once per datagram received.
_datagram = record_builder(Datagram)


def sender_name(address: object) -> str | None:
    """The abstract name in a `recvfrom` address, or None if the sender is not abstract."""
    if isinstance(address, bytes):
        return _abstract_name(address)
    return None


@functools.lru_cache(maxsize=1024)
def _abstract_name(address: bytes) -> str | None:
    # Cached: a process hears from few senders, once per datagram.
    if address.startswith(b"\0") and len(address) > 1:
        try:
            return address[1:].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def dgram_qlen() -> int | None:
    """`net.unix.max_dgram_qlen` of this process's network namespace, None if unreadable."""
    try:
        return int(DGRAM_QLEN_PATH.read_text().strip())
    except (OSError, ValueError):
        return None


class AbstractSocket:
    """A non-blocking AF_UNIX datagram socket bound to an abstract name.

    `send_buffer` asks for that send buffer (bytes): with `SO_SNDBUFFORCE`
    where allowed (root), else `SO_SNDBUF`, which the kernel caps at
    `net.core.wmem_max`; None keeps the kernel's default.
    """

    def __init__(self, name: str, *, send_buffer: int | None = None) -> None:
        self.name = name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.setblocking(False)
            with contextlib.suppress(OSError):  # the kernel caps it; the default still works
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            if send_buffer is not None:
                _set_send_buffer(self._sock, send_buffer)
            self._sock.bind(abstract_address(name))
        except OSError as exc:
            self._sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(
                    f"the abstract address {name!r} is already bound in this network "
                    "namespace; is another agent running?"
                ) from None
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def send_buffer(self) -> int:
        """The send buffer the kernel granted (bytes; the kernel doubles what is asked)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

    def close(self) -> None:
        self._sock.close()

    def receive_nowait(self) -> Datagram | None:
        """The next queued datagram, or None when none is waiting."""
        try:
            data, _, flags, address = self._sock.recvmsg(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        return _datagram(
            data,
            _abstract_name(address) if address.__class__ is bytes else None,
            bool(flags & _MSG_TRUNC) or len(data) > MAX_APP_DATAGRAM,
        )

    async def receive(self) -> Datagram:
        """Wait for the next datagram."""
        while True:
            datagram = self.receive_nowait()
            if datagram is not None:
                return datagram
            await self._readable()

    async def _readable(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._sock.fileno(), wake)
        try:
            await ready
        finally:
            loop.remove_reader(self._sock.fileno())

    def send_to(self, name: str, data: bytes) -> SendResult:
        """Send one datagram to abstract `name` without waiting.

        Other OS errors than the outcomes of `SendResult` are raised as `OSError`.
        """
        try:
            address = abstract_address(name)
        except UnicodeEncodeError:
            return SendResult.NOT_BOUND
        try:
            self._sock.sendto(data, address)
        except (ConnectionRefusedError, FileNotFoundError):
            return SendResult.NOT_BOUND
        except (BlockingIOError, InterruptedError):
            return SendResult.WOULD_BLOCK
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return SendResult.TOO_BIG
            if exc.errno == errno.ENOBUFS:
                return SendResult.NO_MEMORY
            raise
        return SendResult.SENT


#: Linux's SO_SNDBUFFORCE (asm-generic/socket.h); the socket module does not name it.
_SO_SNDBUFFORCE = 32


def _set_send_buffer(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
    except OSError:  # not root: SO_SNDBUF, capped by net.core.wmem_max
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def encode_delivery(envelope: Envelope) -> bytes:
    """The datagram an agent delivers to an application for `envelope` (spec section 3).

    Only `version`, `source_addr`, `source_instance` (when set) and `data` are
    delivered; the destination fields have done their work.
    """
    return encode_envelope(
        Envelope(
            data=envelope.data,
            source_addr=envelope.source_addr,
            source_instance=envelope.source_instance,
        )
    )


def deliver(sock: AbstractSocket, envelope: Envelope) -> SendResult:
    """Send `envelope` to the application at its `dest_addr`; TOO_BIG over `MAX_DATAGRAM`."""
    if envelope.dest_addr is None:
        raise UsageError("deliver needs an envelope with a dest_addr.")
    datagram = encode_delivery(envelope)
    if len(datagram) > MAX_DATAGRAM:
        return SendResult.TOO_BIG
    return sock.send_to(envelope.dest_addr, datagram)


def app_envelope(datagram: Datagram, drops: DropLog) -> Envelope | None:
    """The envelope an application sent, stamped with its own name; None (dropped,
    counted and logged) when it is too big, from a socket without an abstract
    name, not an envelope (spec section 3), or without `dest_addr`.

    `source_addr` is the sender's own name, never what it claims, and
    `source_instance` is cleared: instances are the host's to set.
    """
    if datagram.truncated:
        drops.drop(
            Reason.TOO_BIG,
            f"a datagram of {len(datagram.data)} bytes or more from "
            f"{datagram.sender or 'a socket without an abstract name'}; "
            f"the limit is {MAX_APP_DATAGRAM}",
        )
        return None
    if datagram.sender is None:
        drops.drop(
            Reason.NOT_ABSTRACT,
            "a datagram from a socket without an abstract name; nobody could reply to it",
        )
        return None
    try:
        envelope = decode_envelope(datagram.data)
    except ProtocolError as exc:
        drops.drop(Reason.BAD_MESSAGE, f"from {datagram.sender!r}: {exc}")
        return None
    if envelope.dest_addr is None:
        drops.drop(Reason.NO_DEST_ADDR, f"a message from {datagram.sender!r}")
        return None
    # Not dataclasses.replace: this runs once per message, and that is slow.
    return Envelope(
        data=envelope.data,
        dest_addr=envelope.dest_addr,
        source_addr=datagram.sender,
        dest_instance=envelope.dest_instance,
    )


#: Datagrams handled between two yields to the event loop during a burst.
BATCH = 64


async def serve_datagrams(
    sock: AbstractSocket, handle: Callable[[Datagram], None], *, who: str
) -> None:
    """Hand every datagram arriving on `sock` to `handle`, until cancelled.

    Neither a receive error nor an exception in `handle` ends the loop: each
    is logged as a bug (a peer's garbage must never stop a daemon). During a
    burst the loop yields every `BATCH` datagrams so that other work runs.
    """
    import asyncio

    handled = 0
    while True:
        try:
            datagram = await sock.receive()
        except OSError:
            log_bug(log, f"receiving from applications ({who})")
            await asyncio.sleep(0.1)  # whatever it is, do not spin on it
            continue
        try:
            handle(datagram)
        except Exception:
            log_bug(log, f"the application handler of {who}")
        handled += 1
        if handled % BATCH == 0:
            await asyncio.sleep(0)


#: A wake-up this soon (seconds) after the previous one that found datagrams is taken to
#: come in the middle of its sender's burst (see `BurstReader`).
BURST_WAKE_INTERVAL = 0.001


class BurstReader:
    """Reads a sender's burst in one wake-up rather than one datagram per wake-up.

    A datagram wakes its receiver with a "sync" wake-up, which puts the
    receiver on the sender's CPU and lets it preempt the sender as soon as
    the first datagram of a burst is sent: the receiver reads that one, finds
    nothing more, sleeps, and is woken by the next, in lockstep (on the lab
    machine, 2 to 3 wake-ups for a burst of 8, each a poll and a context
    switch of both processes). A reader calls `woken()` when a wake-up found
    a datagram, before reading the rest: when the previous such wake-up was
    under `BURST_WAKE_INTERVAL` ago (a busy stream), it yields the CPU once
    (`sched_yield`), so that the sender finishes its burst first and one
    wake-up reads all of it (1 per burst, measured, and the last datagram
    read no later). Wake-ups further apart (low rates) never yield: nothing
    is added to the latency of a lone message.
    """

    __slots__ = ("_clock", "_last", "_yield", "yields")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        yield_cpu: Callable[[], None] = os.sched_yield,
    ) -> None:
        self._clock = clock
        self._yield = yield_cpu
        self._last = -1.0
        #: How many times it yielded.
        self.yields = 0

    def woken(self) -> None:
        """A wake-up found a datagram: yield once if the previous one was just before."""
        now = self._clock()
        if now - self._last < BURST_WAKE_INTERVAL:
            self._yield()
            self.yields += 1
            now = self._clock()
        self._last = now


#: sun_path holds 108 bytes, the terminating NUL included.
UNIX_PATH_MAX = 108


@contextlib.contextmanager
def reachable_path(path: Path) -> Iterator[str]:
    """A name for `path` that fits in a unix socket address, valid inside the block.

    Deep state directories make channel socket paths longer than sun_path
    allows; then the directory is opened and the socket is named through
    `/proc/self/fd/<fd>/<name>`, which the kernel resolves like the real path.
    """
    if len(os.fsencode(path)) < UNIX_PATH_MAX:
        yield os.fspath(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)

"""The guest agent (`servergroup guest`): relays between local applications and the host.

Applications send envelopes as datagrams to the abstract name
`cgcs.messaging`; the agent checks them (spec section 3), stamps
`source_addr` with the sender's own abstract name and writes them on the
channel as guest frames. Envelopes that arrive on the channel are delivered
as datagrams to their `dest_addr`. The agent never looks inside `data`.

The channel is one of:

- a character device (`--channel`, the virtio-serial port
  /dev/virtio-ports/cgcs.messaging in a VM). `read()` returning 0 (or an
  error) means the host is not connected: the agent stops reading, waits,
  and re-arms once `poll()` no longer reports a hang-up.
- a UNIX stream socket that the agent listens on (`--channel-listen`, what
  the hypervisor provides on the host side of a VM, used by the lab). One
  host connection at a time: the newest accepted connection wins and the
  older one is closed, which is how live migration hands the channel to the
  relay on another host.

While no host is connected, messages from applications are dropped (and
logged, rate-limited). Nothing a peer sends stops the agent; only
cancellation or `stop` does.

Two entry points run the same agent: `servergroup guest` (the CLI, for
people) and `python -m servergroup.guestcomm` (`main` below: argparse, no
CLI framework), which a VM's /init starts, because under emulation every
module imported at start costs tens of milliseconds of boot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import stat
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from servergroup.common.errors import ConfigError, PermissionNeeded, ServergroupError, UsageError
from servergroup.common.logsetup import log_bug, setup_logging
from servergroup.guestcomm.drops import Counters, DropLog, Reason
from servergroup.guestcomm.protocol import (
    MAX_ADDR_LENGTH,
    MESSAGING_ADDR,
    ChannelDecoder,
    Dropped,
    Envelope,
    encode_guest_frame,
)
from servergroup.guestcomm.sockets import (
    AbstractSocket,
    Datagram,
    SendResult,
    app_envelope,
    deliver,
    reachable_path,
    serve_datagrams,
)

log = logging.getLogger(__name__)

#: The virtio-serial port of the messaging channel inside a VM.
DEFAULT_CHANNEL_DEVICE = Path("/dev/virtio-ports/cgcs.messaging")
#: Bytes that may wait to be written toward the host before messages are dropped.
DEFAULT_QUEUE_LIMIT = 1 << 20
#: How often a device channel checks whether the host has connected.
DEFAULT_HOST_POLL_INTERVAL = 0.5
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestConfig:
    """What `run_guest` needs: exactly one of `channel` and `channel_listen`."""

    #: Character device of the channel (the virtio-serial port in a VM).
    channel: Path | None = None
    #: Path of a UNIX stream socket to create and listen on for the host.
    channel_listen: Path | None = None
    #: Abstract name the agent binds for applications.
    address: str = MESSAGING_ADDR
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    host_poll_interval: float = DEFAULT_HOST_POLL_INTERVAL
    #: A file written (with the agent's PID) once it serves, removed when it stops.
    ready_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.channel is None) == (self.channel_listen is None):
            raise ConfigError("give exactly one channel: a device or a socket path to listen on.")
        size = len(self.address.encode("utf-8"))
        if not 0 < size <= MAX_ADDR_LENGTH or "\0" in self.address:
            raise ConfigError(
                f"the address {self.address!r} must be 1 to {MAX_ADDR_LENGTH} bytes "
                "without NUL characters."
            )
        if self.queue_limit < 1:
            raise ConfigError("the channel queue limit must be at least 1 byte.")
        if self.host_poll_interval <= 0:
            raise ConfigError("the host poll interval must be positive.")

    def describe_channel(self) -> str:
        if self.channel is not None:
            return f"device {self.channel}"
        return f"socket {self.channel_listen}"


def guest_config(
    channel: Path | None,
    channel_listen: Path | None,
    address: str = MESSAGING_ADDR,
    ready_file: Path | None = None,
) -> GuestConfig:
    """The agent's configuration from its command-line options, as both entry points take them.

    No channel at all means the VM's port `DEFAULT_CHANNEL_DEVICE`, when it exists.
    """
    if channel is not None and channel_listen is not None:
        raise UsageError("give either --channel or --channel-listen, not both.")
    if channel is None and channel_listen is None:
        if not DEFAULT_CHANNEL_DEVICE.exists():
            raise UsageError(
                f"no channel: {DEFAULT_CHANNEL_DEVICE} does not exist; "
                "give --channel DEV or --channel-listen PATH."
            )
        channel = DEFAULT_CHANNEL_DEVICE
    return GuestConfig(
        channel=channel, channel_listen=channel_listen, address=address, ready_file=ready_file
    )


class WriteResult(Enum):
    """How a write toward the host ended."""

    QUEUED = "queued"
    NOT_CONNECTED = "not connected"
    QUEUE_FULL = "queue full"


class _ChannelEvents(Protocol):
    def host_connected(self, detail: str) -> None: ...
    def host_disconnected(self, detail: str) -> None: ...
    def channel_data(self, data: bytes) -> None: ...


class _Channel(Protocol):
    @property
    def connected(self) -> bool: ...
    async def start(self) -> None: ...
    def write(self, frame: bytes) -> WriteResult: ...
    def close(self) -> None: ...


# --- socket channel (the lab, or a hypervisor socket seen from inside) ------------------


class _HostConnection(asyncio.Protocol):
    def __init__(self, channel: _ListenChannel) -> None:
        self._channel = channel
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._channel.accepted(self)

    def data_received(self, data: bytes) -> None:
        self._channel.received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel.lost(self, exc)


class _ListenChannel:
    """A listening UNIX stream socket; the newest host connection wins."""

    def __init__(self, path: Path, events: _ChannelEvents, queue_limit: int) -> None:
        self._path = path
        self._events = events
        self._queue_limit = queue_limit
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._current: _HostConnection | None = None

    @property
    def connected(self) -> bool:
        return self._current is not None

    async def start(self) -> None:
        sock = _listen_socket(self._path)
        st = os.stat(self._path)
        self._inode = (st.st_dev, st.st_ino)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _HostConnection(self), sock=sock)

    def accepted(self, conn: _HostConnection) -> None:
        old, self._current = self._current, conn
        if old is not None and old.transport is not None:
            # Live migration: the relay on the new host connected; the old one goes.
            old.transport.abort()
            self._events.host_disconnected("a newer host connection replaced it")
        self._events.host_connected("a host connected to the channel socket")

    def received(self, conn: _HostConnection, data: bytes) -> None:
        if conn is self._current:
            self._events.channel_data(data)

    def lost(self, conn: _HostConnection, exc: Exception | None) -> None:
        if conn is self._current:
            self._current = None
            why = f" ({exc})" if exc is not None else ""
            self._events.host_disconnected(f"the host closed the channel connection{why}")

    def write(self, frame: bytes) -> WriteResult:
        conn = self._current
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return WriteResult.NOT_CONNECTED
        if conn.transport.get_write_buffer_size() + len(frame) > self._queue_limit:
            return WriteResult.QUEUE_FULL
        conn.transport.write(frame)
        return WriteResult.QUEUED

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._current is not None and self._current.transport is not None:
            self._current.transport.abort()
        self._current = None
        # Remove the socket file only if it is still ours (a restarted agent may own it now).
        with contextlib.suppress(OSError):
            st = os.lstat(self._path)
            if (st.st_dev, st.st_ino) == self._inode:
                self._path.unlink()


def _listen_socket(path: Path) -> socket.socket:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; not replacing it.")
        path.unlink()  # a stale socket of an earlier agent: nobody can connect to it anymore
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the directory of {path}: {exc.strerror}.") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with reachable_path(path) as where:
            sock.bind(where)
        sock.listen(8)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror}.") from None
    return sock


# --- device channel (virtio-serial in a VM) ---------------------------------------------


class _DeviceChannel:
    """A character device: read() of 0 bytes or a hang-up means the host is away."""

    def __init__(
        self, path: Path, events: _ChannelEvents, queue_limit: int, poll_interval: float
    ) -> None:
        self._path = path
        self._events = events
        self._queue_limit = queue_limit
        self._poll_interval = poll_interval
        self._fd = -1
        self._connected = False
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self._watcher: asyncio.Task[None] | None = None
        self._host_gone = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            self._fd = os.open(self._path, flags)
        except FileNotFoundError:
            raise ConfigError(f"the channel device {self._path} does not exist.") from None
        except PermissionError:
            raise PermissionNeeded(
                f"no permission to open the channel device {self._path}."
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot open the channel device {self._path}: {exc.strerror}."
            ) from None
        self._watcher = asyncio.create_task(self._watch(), name="guest-channel-device")

    async def _watch(self) -> None:
        """While the host is away, check every poll interval whether it came back."""
        loop = asyncio.get_running_loop()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLOUT)
        while True:
            revents = dict(poller.poll(0)).get(self._fd, 0)
            if revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                await asyncio.sleep(self._poll_interval)
                continue
            self._connected = True
            self._host_gone.clear()
            loop.add_reader(self._fd, self._readable)
            self._events.host_connected(f"the host side of {self._path} is open")
            await self._host_gone.wait()
            await asyncio.sleep(self._poll_interval)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._gone(f"reading the channel failed: {exc.strerror}")
            return
        if not data:
            self._gone("the channel read 0 bytes: the host is not connected")
            return
        self._events.channel_data(data)

    def _gone(self, detail: str) -> None:
        if not self._connected:
            return
        self._connected = False
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        loop.remove_writer(self._fd)
        self._queue.clear()
        self._queued = 0
        self._host_gone.set()
        self._events.host_disconnected(detail)

    def write(self, frame: bytes) -> WriteResult:
        if not self._connected:
            return WriteResult.NOT_CONNECTED
        if self._queued + len(frame) > self._queue_limit:
            return WriteResult.QUEUE_FULL
        was_empty = not self._queue
        self._queue.append(memoryview(frame))
        self._queued += len(frame)
        if was_empty:
            self._flush()
        return WriteResult.QUEUED

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            head = self._queue[0]
            try:
                written = os.write(self._fd, head)
            except (BlockingIOError, InterruptedError):
                loop.add_writer(self._fd, self._flush)
                return
            except OSError as exc:
                self._gone(f"writing the channel failed: {exc.strerror}")
                return
            self._queued -= written
            if written == len(head):
                self._queue.popleft()
            else:
                self._queue[0] = head[written:]
        loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._fd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._connected = False


# --- the agent --------------------------------------------------------------------------


class GuestAgent:
    """Relays envelopes between the applications of this guest and its host."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self.counters = Counters()
        self._drops = DropLog(log, self.counters)
        self._decoder = ChannelDecoder()
        self._sock: AbstractSocket | None = None
        self._channel: _Channel | None = None

    @property
    def connected(self) -> bool:
        """True while a host is connected to the channel."""
        return self._channel is not None and self._channel.connected

    async def run(
        self, *, stop: asyncio.Event | None = None, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Relay until `stop` is set or the task is cancelled."""
        config = self.config
        self._sock = AbstractSocket(config.address)
        if config.channel is not None:
            self._channel = _DeviceChannel(
                config.channel, self, config.queue_limit, config.host_poll_interval
            )
        else:
            assert config.channel_listen is not None
            self._channel = _ListenChannel(config.channel_listen, self, config.queue_limit)
        try:
            await self._channel.start()
        except BaseException:
            self._channel.close()
            self._sock.close()
            raise
        log.info(
            "guest agent ready: applications at abstract %r, channel %s",
            config.address,
            config.describe_channel(),
        )
        serving = asyncio.create_task(self._serve_apps(), name="guest-apps")
        try:
            if config.ready_file is not None:
                _write_ready_file(config.ready_file)
            if on_ready is not None:
                on_ready()
            if stop is None:
                await serving
            else:
                stopping = asyncio.create_task(stop.wait(), name="guest-stop")
                try:
                    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            if config.ready_file is not None:
                with contextlib.suppress(OSError):
                    config.ready_file.unlink()
            self._channel.close()
            self._sock.close()
            self._drops.close()
            log.info("guest agent stopped; counters: %s", self.counters.describe())

    # -- applications -> host

    async def _serve_apps(self) -> None:
        assert self._sock is not None
        await serve_datagrams(self._sock, self._from_app, who="the guest agent")

    def _from_app(self, datagram: Datagram) -> None:
        self.counters.from_apps += 1
        envelope = app_envelope(datagram, self._drops)
        if envelope is None:
            return
        assert self._channel is not None
        result = self._channel.write(encode_guest_frame(envelope))
        if result is WriteResult.QUEUED:
            self.counters.to_channel += 1
        elif result is WriteResult.NOT_CONNECTED:
            self._drops.drop(
                Reason.HOST_NOT_CONNECTED,
                f"a message from {envelope.source_addr!r} to {envelope.dest_addr!r}: "
                "no host is connected to the channel",
            )
        else:
            self._drops.drop(
                Reason.CHANNEL_QUEUE_FULL,
                f"a message from {envelope.source_addr!r}: the host is not reading the channel",
            )

    # -- host -> applications (the channel's events)

    def host_connected(self, detail: str) -> None:
        self._decoder = ChannelDecoder()  # a new host starts a new stream
        log.info("host connected: %s", detail)

    def host_disconnected(self, detail: str) -> None:
        log.info("host disconnected: %s", detail)

    def channel_data(self, data: bytes) -> None:
        try:
            for item in self._decoder.feed(data):
                if isinstance(item, Dropped):
                    self._drops.drop(item.reason, f"from the host: {item.detail}")
                else:
                    self.counters.from_channel += 1
                    self._to_app(item)
        except Exception:
            log_bug(log, "the guest agent's channel handler")

    def _to_app(self, envelope: Envelope) -> None:
        assert self._sock is not None
        if envelope.dest_addr is None:
            self._drops.drop(Reason.NO_DEST_ADDR, "a message from the host")
            return
        try:
            result = deliver(self._sock, envelope)
        except OSError as exc:
            self._drops.drop(Reason.SEND_FAILED, f"to {envelope.dest_addr!r}: {exc}")
            return
        if result is SendResult.SENT:
            self.counters.to_apps += 1
        elif result is SendResult.NOT_BOUND:
            self._drops.drop(
                Reason.APP_NOT_BOUND,
                f"a message for {envelope.dest_addr!r}: nothing is bound there",
                level=logging.DEBUG,
            )
        elif result is SendResult.WOULD_BLOCK:
            self._drops.drop(
                Reason.APP_NOT_READING, f"{envelope.dest_addr!r} does not read its messages"
            )
        else:
            self._drops.drop(
                Reason.TOO_BIG,
                f"a message for {envelope.dest_addr!r} would be a datagram over 4095 bytes",
            )


async def run_guest(config: GuestConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run the guest agent until `stop` is set or the task is cancelled.

    Raises `ConfigError`/`PermissionNeeded` when the channel cannot be set up
    and `AddressInUse` when another agent has the address.
    """
    await GuestAgent(config).run(stop=stop)


def _write_ready_file(path: Path) -> None:
    """Write `path` (this PID) whole or not at all; a failure is logged, the agent serves on."""
    part = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(f"{os.getpid()}\n")
        part.replace(path)
    except OSError as exc:
        log.warning("cannot write the ready file %s: %s", path, exc.strerror)
        with contextlib.suppress(OSError):
            part.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m servergroup.guestcomm`: the guest agent without the CLI framework."""
    parser = argparse.ArgumentParser(
        prog="python -m servergroup.guestcomm",
        description="Run the guest agent (as `servergroup guest`, with fewer imports: "
        "what a VM's /init starts).",
    )
    parser.add_argument(
        "--channel",
        type=Path,
        metavar="DEV",
        help=f"character device of the channel (default {DEFAULT_CHANNEL_DEVICE} when it exists)",
    )
    parser.add_argument(
        "--channel-listen",
        type=Path,
        metavar="PATH",
        help="instead of a device: listen on a UNIX stream socket at PATH for the host",
    )
    parser.add_argument(
        "--address",
        default=MESSAGING_ADDR,
        metavar="NAME",
        help=f"abstract name applications send to (default {MESSAGING_ADDR})",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="write PATH (the agent's PID) once it serves; removed when it stops",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument(
        "--log-json",
        dest="log_json",
        action="store_true",
        help="log one JSON object per line (the default when not a terminal)",
    )
    parser.add_argument("--log-text", dest="log_json", action="store_false", help="log text lines")
    parser.set_defaults(log_json=None)
    args = parser.parse_args(argv)
    verbose: int = args.verbose
    setup_logging(
        logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        json=args.log_json,
    )
    try:
        config = guest_config(args.channel, args.channel_listen, args.address, args.ready_file)
        asyncio.run(_run_until_signal(config))
    except ServergroupError as exc:
        sys.stderr.write(f"servergroup guest: {exc}\n")
        return exc.exit_status
    return 0


async def _run_until_signal(config: GuestConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_guest(config, stop=stop)
    log.info("guest agent stopped by a signal")

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
module imported at start costs tens of milliseconds of boot. For the same
reason the agent runs on a small loop of its own (`_Loop`: a selector and
timers) rather than asyncio, whose import alone took about half a second of
a VM's boot under TCG.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import logging
import os
import select
import selectors
import signal
import socket
import stat
import sys
import time
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
    BATCH,
    AbstractSocket,
    Datagram,
    SendResult,
    app_envelope,
    deliver,
    reachable_path,
)

log = logging.getLogger(__name__)

#: The virtio-serial port of the messaging channel inside a VM.
DEFAULT_CHANNEL_DEVICE = Path("/dev/virtio-ports/cgcs.messaging")
#: Bytes that may wait to be written toward the host before messages are dropped.
DEFAULT_QUEUE_LIMIT = 1 << 20
#: How often a device channel checks whether the host has connected.
DEFAULT_HOST_POLL_INTERVAL = 0.5
_READ_SIZE = 65536
#: How long the agent waits after an error receiving from applications (no spinning).
_RECEIVE_ERROR_PAUSE = 0.1


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


# --- the agent's event loop -------------------------------------------------------------


class _Timer:
    """A callback `_Loop.call_later` will run, unless cancelled first."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """Readers, writers and timers on one selector, run until `stop`.

    A callback that raises is logged as a bug and the loop goes on: a peer's
    garbage must never stop the agent. `stop` may be called from a signal
    handler: the wake-up descriptor ends the select at once.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, _Timer]] = []
        self._sequence = 0
        self._stopping = False
        self._wake_read, self._wake_write = socket.socketpair()
        for end in (self._wake_read, self._wake_write):
            end.setblocking(False)
        self.add_reader(self._wake_read.fileno(), self._drain_wakeups)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def _update(self, fd: int) -> None:
        events = (selectors.EVENT_READ if fd in self._readers else 0) | (
            selectors.EVENT_WRITE if fd in self._writers else 0
        )
        registered = self._selector.get_map().get(fd)
        if events == 0:
            if registered is not None:
                self._selector.unregister(fd)
        elif registered is None:
            self._selector.register(fd, events)
        elif registered.events != events:
            self._selector.modify(fd, events)

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(callback)
        self._sequence += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._sequence, timer))
        return timer

    def stop(self) -> None:
        """End `run` (safe in a signal handler)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def run(self) -> None:
        """Run callbacks as their descriptors and timers come due, until `stop`."""
        previous_wakeup = signal.set_wakeup_fd(self._wake_write.fileno())
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._timeout()):
                    if mask & selectors.EVENT_READ:
                        self._call(self._readers.get(key.fd))
                    if mask & selectors.EVENT_WRITE:
                        self._call(self._writers.get(key.fd))
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, timer = heapq.heappop(self._timers)
                    if not timer.cancelled:
                        self._call(timer.callback)
        finally:
            signal.set_wakeup_fd(previous_wakeup)

    def _timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _call(self, callback: Callable[[], None] | None) -> None:
        if callback is None:  # removed by an earlier callback of this round
            return
        try:
            callback()
        except Exception:
            log_bug(log, "a guest agent callback")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_read.recv(4096):
                pass

    def close(self) -> None:
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()


class _Outbox:
    """Bytes waiting to be written toward the host, written as the descriptor takes them."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: deque[memoryview] = deque()
        self.queued = 0

    def push(self, frame: bytes, flush: Callable[[], None]) -> WriteResult:
        """Queue `frame` unless over the limit; `flush` starts the writing when idle."""
        if self.queued + len(frame) > self._limit:
            return WriteResult.QUEUE_FULL
        idle = self.queued == 0
        self._queue.append(memoryview(frame))
        self.queued += len(frame)
        if idle:
            flush()
        return WriteResult.QUEUED

    def write(self, fd: int) -> bool:
        """Write what the descriptor takes; True when all went, False when it would block.

        Other errors than would-block are raised as `OSError`.
        """
        while self._queue:
            head = self._queue[0]
            try:
                written = os.write(fd, head)
            except (BlockingIOError, InterruptedError):
                return False
            self.queued -= written
            if written == len(head):
                self._queue.popleft()
            else:
                self._queue[0] = head[written:]
        return True

    def clear(self) -> None:
        self._queue.clear()
        self.queued = 0


class _ChannelEvents(Protocol):
    def host_connected(self, detail: str) -> None: ...
    def host_disconnected(self, detail: str) -> None: ...
    def channel_data(self, data: bytes) -> None: ...


class _Channel(Protocol):
    @property
    def connected(self) -> bool: ...
    def start(self) -> None: ...
    def write(self, frame: bytes) -> WriteResult: ...
    def close(self) -> None: ...


# --- socket channel (the lab, or a hypervisor socket seen from inside) ------------------


class _HostConnection:
    """One accepted host connection and what waits to be written to it."""

    def __init__(self, sock: socket.socket, queue_limit: int) -> None:
        self.sock = sock
        self.outbox = _Outbox(queue_limit)


class _ListenChannel:
    """A listening UNIX stream socket; the newest host connection wins."""

    def __init__(self, path: Path, events: _ChannelEvents, queue_limit: int, loop: _Loop) -> None:
        self._path = path
        self._events = events
        self._queue_limit = queue_limit
        self._loop = loop
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._current: _HostConnection | None = None

    @property
    def connected(self) -> bool:
        return self._current is not None

    def start(self) -> None:
        self._listener = _listen_socket(self._path)
        st = os.stat(self._path)
        self._inode = (st.st_dev, st.st_ino)
        self._loop.add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accepting a host connection failed: %s", exc.strerror)
            return
        sock.setblocking(False)
        conn = _HostConnection(sock, self._queue_limit)
        old, self._current = self._current, conn
        self._loop.add_reader(sock.fileno(), lambda: self._readable(conn))
        if old is not None:
            # Live migration: the relay on the new host connected; the old one goes.
            self._drop(old)
            self._events.host_disconnected("a newer host connection replaced it")
        self._events.host_connected("a host connected to the channel socket")

    def _readable(self, conn: _HostConnection) -> None:
        try:
            data = conn.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(conn, f" ({exc.strerror})")
            return
        if not data:
            self._lost(conn, "")
        elif conn is self._current:
            self._events.channel_data(data)

    def _lost(self, conn: _HostConnection, why: str) -> None:
        self._drop(conn)
        if conn is self._current:
            self._current = None
            self._events.host_disconnected(f"the host closed the channel connection{why}")

    def _drop(self, conn: _HostConnection) -> None:
        if conn.sock.fileno() >= 0:
            self._loop.remove_reader(conn.sock.fileno())
            self._loop.remove_writer(conn.sock.fileno())
            conn.sock.close()
        conn.outbox.clear()

    def write(self, frame: bytes) -> WriteResult:
        conn = self._current
        if conn is None:
            return WriteResult.NOT_CONNECTED
        return conn.outbox.push(frame, lambda: self._flush(conn))

    def _flush(self, conn: _HostConnection) -> None:
        fd = conn.sock.fileno()
        try:
            done = conn.outbox.write(fd)
        except OSError as exc:
            self._lost(conn, f" ({exc.strerror})")
            return
        if done:
            self._loop.remove_writer(fd)
        else:
            self._loop.add_writer(fd, lambda: self._flush(conn))

    def close(self) -> None:
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._current is not None:
            self._drop(self._current)
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
    """A character device: read() of 0 bytes or a hang-up means the host is away.

    While the host is away the channel checks every poll interval whether it
    came back (a poll without a hang-up), then reads until it goes again.
    """

    def __init__(
        self,
        path: Path,
        events: _ChannelEvents,
        queue_limit: int,
        poll_interval: float,
        loop: _Loop,
    ) -> None:
        self._path = path
        self._events = events
        self._poll_interval = poll_interval
        self._loop = loop
        self._fd = -1
        self._connected = False
        self._outbox = _Outbox(queue_limit)
        self._check_timer: _Timer | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
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
        self._check()

    def _check(self) -> None:
        """Is the host there? Read from it if so, else look again after the poll interval."""
        self._check_timer = None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLOUT)
        revents = dict(poller.poll(0)).get(self._fd, 0)
        if revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            self._check_timer = self._loop.call_later(self._poll_interval, self._check)
            return
        self._connected = True
        self._loop.add_reader(self._fd, self._readable)
        self._events.host_connected(f"the host side of {self._path} is open")

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
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._outbox.clear()
        self._events.host_disconnected(detail)
        self._check_timer = self._loop.call_later(self._poll_interval, self._check)

    def write(self, frame: bytes) -> WriteResult:
        if not self._connected:
            return WriteResult.NOT_CONNECTED
        return self._outbox.push(frame, self._flush)

    def _flush(self) -> None:
        try:
            done = self._outbox.write(self._fd)
        except OSError as exc:
            self._gone(f"writing the channel failed: {exc.strerror}")
            return
        if done:
            self._loop.remove_writer(self._fd)
        else:
            self._loop.add_writer(self._fd, self._flush)

    def close(self) -> None:
        if self._check_timer is not None:
            self._check_timer.cancel()
            self._check_timer = None
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._connected = False


# --- the agent --------------------------------------------------------------------------


class GuestAgent:
    """Relays envelopes between the applications of this guest and its host."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self.counters = Counters()
        self._loop = _Loop()
        self._drops = DropLog(log, self.counters, schedule=self._loop.call_later)
        self._decoder = ChannelDecoder()
        self._sock: AbstractSocket | None = None
        self._channel: _Channel | None = None

    @property
    def connected(self) -> bool:
        """True while a host is connected to the channel."""
        return self._channel is not None and self._channel.connected

    def stop(self) -> None:
        """End `run` (safe in a signal handler)."""
        self._loop.stop()

    def run(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Relay until `stop` is called.

        Raises `ConfigError`/`PermissionNeeded` when the channel cannot be set
        up and `AddressInUse` when another agent has the address.
        """
        config = self.config
        loop = self._loop
        try:
            self._sock = AbstractSocket(config.address)
        except BaseException:
            loop.close()
            raise
        if config.channel is not None:
            self._channel = _DeviceChannel(
                config.channel, self, config.queue_limit, config.host_poll_interval, loop
            )
        else:
            assert config.channel_listen is not None
            self._channel = _ListenChannel(config.channel_listen, self, config.queue_limit, loop)
        try:
            self._channel.start()
        except BaseException:
            self._channel.close()
            self._sock.close()
            loop.close()
            raise
        log.info(
            "guest agent ready: applications at abstract %r, channel %s",
            config.address,
            config.describe_channel(),
        )
        loop.add_reader(self._sock.fileno(), self._apps_readable)
        try:
            if config.ready_file is not None:
                _write_ready_file(config.ready_file)
            if on_ready is not None:
                on_ready()
            loop.run()
        finally:
            if config.ready_file is not None:
                with contextlib.suppress(OSError):
                    config.ready_file.unlink()
            self._channel.close()
            self._sock.close()
            self._drops.close()
            loop.close()
            log.info("guest agent stopped; counters: %s", self.counters.describe())

    # -- applications -> host

    def _apps_readable(self) -> None:
        """Take up to `BATCH` queued datagrams, then let other work run."""
        assert self._sock is not None
        for _ in range(BATCH):
            try:
                datagram = self._sock.receive_nowait()
            except OSError:
                log_bug(log, "receiving from applications (the guest agent)")
                self._pause_apps()
                return
            if datagram is None:
                return
            self.counters.from_apps += 1
            try:
                self._from_app(datagram)
            except Exception:
                log_bug(log, "the application handler of the guest agent")

    def _pause_apps(self) -> None:
        """Stop reading applications for a moment: whatever failed, do not spin on it."""
        assert self._sock is not None
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)
        self._loop.call_later(
            _RECEIVE_ERROR_PAUSE, lambda: self._loop.add_reader(fd, self._apps_readable)
        )

    def _from_app(self, datagram: Datagram) -> None:
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


def run_guest(config: GuestConfig) -> None:
    """Run the guest agent until SIGTERM or SIGINT; both end it cleanly.

    Raises `ConfigError`/`PermissionNeeded` when the channel cannot be set up
    and `AddressInUse` when another agent has the address.
    """
    agent = GuestAgent(config)
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in stops}
    for signum in stops:
        signal.signal(signum, lambda _signum, _frame: agent.stop())
    try:
        agent.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
        run_guest(config)
    except ServergroupError as exc:
        sys.stderr.write(f"servergroup guest: {exc}\n")
        return exc.exit_status
    return 0

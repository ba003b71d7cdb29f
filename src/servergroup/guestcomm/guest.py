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

Flow control (what holds under load; nothing is ever reordered or repeated):

- Applications -> channel: backpressure, not drops. Frames wait in the
  channel's write buffer. Once it holds more than `channel_high_water` bytes
  (the host is not reading fast enough) the agent stops reading its
  applications' socket; it reads again once the buffer is down to
  `channel_low_water`. Meanwhile datagrams wait in the kernel's queue of the
  agent's socket, and when that is full the applications' sends block (or
  fail with EAGAIN when non-blocking): a fast sender is slowed, not dropped.
  The buffer's hard bound `queue_limit` (at least the high-water mark plus
  the longest line) is only a safety net: a frame over it is dropped and
  counted (`channel queue full`), which the high-water mark makes
  unreachable. Frames still unwritten when a host connection ends are lost
  with it and counted (`unsent at disconnect`). The frames of one round of
  the loop (up to `BATCH` datagrams read from applications) go out in one
  `writev` once the round is done, not one write each.
- No host connected: a message to `cgcs.server_grp` is answered at once
  with a `nack` in the original's format, from `source_addr`
  `cgcs.server_grp`, to its sender (`orig_msg_type` is the request's
  `msg_type`, or "unknown"; its `id` is copied when it is a non-negative
  integer); a nack is never answered with a nack, and a message to any
  other address is dropped and counted (`host not connected`).
- Channel -> applications: each destination address has a queue of its
  own. A datagram is sent at once when its destination's queue is empty;
  when the application's kernel queue is full (EAGAIN) it waits in the
  agent's queue, which is retried every `app_retry_interval` until empty.
  A datagram for a destination whose queue is not empty is appended, never
  sent ahead. Beyond `app_queue_limit` datagrams or `app_queue_bytes` bytes
  in one queue a datagram is dropped and counted (`app not reading`): the
  application sees the gap. The newest one that found the queue full is
  kept aside instead (the one kept before it is then dropped) and queued
  once there is room, so that the gap shows even when nothing follows it;
  nothing overtakes it (a later delivery is kept aside in its place, a
  later answer takes it along).
  An address where nothing is bound is dropped at once (`app not bound`),
  and so is what waits for an application that has gone away. An empty
  queue is forgotten.
- Answers: an ack or nack of an application's broadcasts is not dropped at
  those bounds, since a cumulative ack that reached it after a dropped nack
  would acknowledge a refused broadcast: it waits in the same queue, in
  order, up to `APP_ANSWER_ALLOWANCE` more datagrams (and
  `APP_ANSWER_ALLOWANCE_BYTES`); an application using the client library
  has at most its window of broadcasts (1024) awaiting answers. Past that
  the answer is dropped (`answer lost`, an error), and so is every later
  answer for that address while the agent runs: its pending broadcasts
  end unconfirmed at the client, never wrongly acknowledged. The channel is never paused for a
  slow application: one application that does not read never slows the
  others.
- Receivers first: while more than `app_behind_high` datagrams wait for an
  application that is reading (it took one within `app_stall_after`), the
  agent stops reading its applications' sends, until every such queue is
  down to `app_behind_low`. An application that sends as fast as it may and
  receives the whole group's traffic is then slowed in what it sends, not
  made to lose what it receives: the server's own sends wait for its own
  receivers, and no other server is slowed. An application that does not
  read at all (nothing taken for `app_stall_after`) holds nothing back: its
  queue fills to its bound and drops, as above.
- The kernel's own queue per socket (`net.unix.max_dgram_qlen`, 10 by
  default) throttles every local datagram; servers raise it (to
  `sockets.GUEST_DGRAM_QLEN`), and the agent warns at start when it is
  below `sockets.MIN_DGRAM_QLEN`. Every datagram the agent sent and its
  application has not read yet counts against the agent's send buffer,
  whoever it is for; once that is full every send fails with EAGAIN. So
  the agent asks for a large one (`AGENT_SEND_BUFFER`): an application
  that does not read holds at most its kernel queue of it. Caveat: the
  kernel does not apply `max_dgram_qlen` to datagrams from the socket an
  application is connected to, so an application connected to the agent
  (as the client library is, to see room in the agent's queue) that stops
  reading can take the whole send buffer, and then deliveries to every
  application of the server wait in their queues (and overflow them) until
  it reads or closes its socket.

Per message, cheaply: a datagram in the client library's form is stamped
with its sender's name without being encoded again
(`protocol.guest_frame_of_datagram`; a full parse still checks it; any
other form is decoded and encoded as before), and a host frame in this
project's form is cut into the datagram delivered, not parsed
(`protocol.delivery_of_frame`). Reading applications, a wake-up that comes
less than 1 ms after the previous one (a busy sender) yields the CPU once
before reading on (`sockets.BurstReader`), so that a sending application's
burst is read in one wake-up and written toward the host in one `writev`
rather than one datagram per wake-up.

Nothing a peer sends stops the agent; only cancellation or `stop` does. Its
`Counters` are logged when it stops.

Companions. Other agents of the guest can run beside this one, each on a
thread of its own, started once the agent serves (so that they can send
through it) and stopped when it stops: `run_guest(config, companions)`.
The scale agent (`servergroup.scaling.agent`, bound at `cgcs.scale`) is
one, on by default; the guest agent itself knows nothing of scaling (the
entry points compose them: `main(extensions=...)`, the CLI). A companion
that fails is logged; the agent serves on.

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
import itertools
import json
import logging
import os
import select
import selectors
import signal
import socket
import stat
import sys
import threading
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
    MAX_DATAGRAM,
    MAX_LINE,
    MESSAGING_ADDR,
    SERVER_GROUP_ADDR,
    VERSION,
    ChannelDecoder,
    Dropped,
    Envelope,
    JsonObject,
    decode_line,
    delivery_of_frame,
    encode_guest_frame,
    guest_frame_of_datagram,
)
from servergroup.guestcomm.sockets import (
    BATCH,
    GUEST_DGRAM_QLEN,
    MIN_DGRAM_QLEN,
    NO_HOST_LOG_MSG,
    AbstractSocket,
    BurstReader,
    Datagram,
    SendResult,
    app_envelope,
    dgram_qlen,
    encode_delivery,
    reachable_path,
)

log = logging.getLogger(__name__)

#: The virtio-serial port of the messaging channel inside a VM.
DEFAULT_CHANNEL_DEVICE = Path("/dev/virtio-ports/cgcs.messaging")
#: Hard bound of the bytes waiting to be written toward the host (a safety net: see
#: the high-water mark).
DEFAULT_QUEUE_LIMIT = 1 << 20
#: Above this many bytes waiting toward the host the agent stops reading applications...
DEFAULT_CHANNEL_HIGH_WATER = 256 << 10
#: ... and at or below this many it reads them again.
DEFAULT_CHANNEL_LOW_WATER = 64 << 10
#: Datagrams that may wait in the agent for one application before more are dropped...
#: (about two seconds of a group at full speed with short texts, as the host's bound, so
#: that an application starved of CPU for a moment loses nothing)
DEFAULT_APP_QUEUE_LIMIT = 16384
#: ... and bytes.
DEFAULT_APP_QUEUE_BYTES = 4 << 20
#: The widest bounds `--app-queue-limit` and `--app-queue-bytes` accept.
MAX_APP_QUEUE_LIMIT = 1 << 20
MAX_APP_QUEUE_BYTES = 1 << 30
#: Datagrams (and bytes) beyond those bounds that answers to an application's own
#: requests (its broadcasts' acks and nacks) may still take; past them an answer is lost.
APP_ANSWER_ALLOWANCE = 4096
APP_ANSWER_ALLOWANCE_BYTES = 1 << 20
#: How often datagrams waiting for an application are tried again.
DEFAULT_APP_RETRY_INTERVAL = 0.002
#: Above this many datagrams waiting for an application that reads, the agent stops
#: reading its applications' sends (receivers first)...
DEFAULT_APP_BEHIND_HIGH = 1024
#: ... until no such queue holds more than this many.
DEFAULT_APP_BEHIND_LOW = 256
#: An application that took nothing from its queue for this long does not read: it
#: holds no sends back.
DEFAULT_APP_STALL_AFTER = 1.0
#: The send buffer the agent's socket asks for (the kernel grants twice that): every
#: datagram not yet read by its application counts against it, so one application that
#: does not read must not use it all up (the kernel's default, about 200 KiB, holds 26
#: datagrams of 4 KiB; an application's queue of 1024 small datagrams takes about 800 KiB).
AGENT_SEND_BUFFER = 8 << 20
#: How often a device channel checks whether the host has connected.
DEFAULT_HOST_POLL_INTERVAL = 0.5
_READ_SIZE = 65536
#: Frames handed to one `writev` toward the host (the kernel takes up to IOV_MAX, 1024).
_WRITEV_MAX = 256
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
    #: Hard bound (bytes) of the channel's write buffer; never reached in normal
    #: operation, as reading stops above `channel_high_water`.
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    #: Stop reading applications while more bytes than this wait toward the host.
    channel_high_water: int = DEFAULT_CHANNEL_HIGH_WATER
    #: Read applications again once no more bytes than this wait toward the host.
    channel_low_water: int = DEFAULT_CHANNEL_LOW_WATER
    #: Bound of the agent's queue for one application, in datagrams...
    app_queue_limit: int = DEFAULT_APP_QUEUE_LIMIT
    #: ... and in bytes.
    app_queue_bytes: int = DEFAULT_APP_QUEUE_BYTES
    #: How often datagrams waiting for an application are tried again (seconds).
    app_retry_interval: float = DEFAULT_APP_RETRY_INTERVAL
    #: Stop reading applications while more datagrams than this wait for one that reads...
    app_behind_high: int = DEFAULT_APP_BEHIND_HIGH
    #: ... until no queue of one that reads holds more than this many.
    app_behind_low: int = DEFAULT_APP_BEHIND_LOW
    #: An application that took nothing for this long (seconds) holds no sends back.
    app_stall_after: float = DEFAULT_APP_STALL_AFTER
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
        if not 0 <= self.channel_low_water < self.channel_high_water:
            raise ConfigError(
                "the channel's low-water mark must be at least 0 and below its high-water mark "
                f"(got {self.channel_low_water} and {self.channel_high_water} bytes)."
            )
        if self.queue_limit < self.channel_high_water + MAX_LINE:
            raise ConfigError(
                f"the channel queue limit must be at least the high-water mark plus {MAX_LINE} "
                f"bytes (the longest line), {self.channel_high_water + MAX_LINE} bytes here."
            )
        if not 1 <= self.app_queue_limit <= MAX_APP_QUEUE_LIMIT:
            raise ConfigError(
                "the queue for an application (--app-queue-limit) must hold at least 1 datagram "
                f"and at most {MAX_APP_QUEUE_LIMIT} (got {self.app_queue_limit})."
            )
        if not MAX_DATAGRAM <= self.app_queue_bytes <= MAX_APP_QUEUE_BYTES:
            raise ConfigError(
                f"the queue for an application (--app-queue-bytes) must hold at least "
                f"{MAX_DATAGRAM} bytes (the largest datagram) and at most {MAX_APP_QUEUE_BYTES} "
                f"(got {self.app_queue_bytes})."
            )
        if not 0 <= self.app_behind_low < self.app_behind_high:
            raise ConfigError(
                "the low-water mark of an application's queue must be at least 0 and below "
                f"its high-water mark (got {self.app_behind_low} and {self.app_behind_high})."
            )
        if self.app_stall_after <= 0:
            raise ConfigError(
                "the time after which an application counts as stalled must be positive."
            )
        if not 0 < self.app_retry_interval <= 1:
            raise ConfigError(
                "the retry interval toward applications must be over 0 and at most 1 s."
            )
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
    *,
    app_queue_limit: int = DEFAULT_APP_QUEUE_LIMIT,
    app_queue_bytes: int = DEFAULT_APP_QUEUE_BYTES,
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
        channel=channel,
        channel_listen=channel_listen,
        address=address,
        ready_file=ready_file,
        app_queue_limit=app_queue_limit,
        app_queue_bytes=app_queue_bytes,
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
        #: Callbacks to run once this round's readers, writers and timers have run.
        self._soon: list[Callable[[], None]] = []
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

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the callbacks of this round have run (before the next select)."""
        self._soon.append(callback)

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
                while self._soon:
                    soon, self._soon = self._soon, []
                    for callback in soon:
                        self._call(callback)
        finally:
            signal.set_wakeup_fd(previous_wakeup)

    def _timeout(self) -> float | None:
        if self._soon:
            return 0.0
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
    """Bytes waiting to be written toward the host, written as the descriptor takes them.

    Frames queued while the agent handles one round of its loop (a batch of
    up to `BATCH` datagrams from its applications) go out in one `writev`
    after it, not one write each: fewer system calls here, and fewer, larger
    reads for the host's relay (the sending host's daemon was the busiest
    process of a burst). `push` asks for that flush (`schedule`) only when
    the outbox was empty; the caller runs it once the round is done.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: deque[memoryview] = deque()
        self.queued = 0

    def push(self, frame: bytes, schedule: Callable[[], None]) -> WriteResult:
        """Queue `frame` unless over the limit; `schedule()` (when idle) arranges a flush."""
        if self.queued + len(frame) > self._limit:
            return WriteResult.QUEUE_FULL
        idle = self.queued == 0
        self._queue.append(memoryview(frame))
        self.queued += len(frame)
        if idle:
            schedule()
        return WriteResult.QUEUED

    def write(self, fd: int) -> bool:
        """Write what the descriptor takes; True when all went, False when it would block.

        Other errors than would-block are raised as `OSError`.
        """
        queue = self._queue
        while queue:
            try:
                if len(queue) == 1:
                    written = os.write(fd, queue[0])
                else:
                    written = os.writev(fd, list(itertools.islice(queue, _WRITEV_MAX)))
            except (BlockingIOError, InterruptedError):
                return False
            self.queued -= written
            while written:
                head = queue[0]
                if written >= len(head):
                    written -= len(head)
                    queue.popleft()
                else:
                    queue[0] = head[written:]
                    written = 0
        return True

    def clear(self) -> int:
        """Forget what waits; returns how many frames that was (one partly written counts)."""
        frames = len(self._queue)
        self._queue.clear()
        self.queued = 0
        return frames


class _ChannelEvents(Protocol):
    def host_connected(self, detail: str) -> None: ...
    def host_disconnected(self, detail: str, unsent: int) -> None:
        """The host went away; `unsent` frames it had not read are lost with it."""

    def channel_data(self, data: bytes) -> None: ...
    def channel_written(self, pending: int) -> None:
        """The channel wrote some of its buffer; `pending` bytes still wait."""


class _Channel(Protocol):
    @property
    def connected(self) -> bool: ...
    @property
    def pending(self) -> int:
        """Bytes waiting to be written toward the host."""

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

    @property
    def pending(self) -> int:
        return 0 if self._current is None else self._current.outbox.queued

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
            unsent = self._drop(old)
            self._events.host_disconnected("a newer host connection replaced it", unsent)
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
        unsent = self._drop(conn)
        if conn is self._current:
            self._current = None
            self._events.host_disconnected(f"the host closed the channel connection{why}", unsent)

    def _drop(self, conn: _HostConnection) -> int:
        """Close `conn`; returns how many frames it had not written."""
        if conn.sock.fileno() >= 0:
            self._loop.remove_reader(conn.sock.fileno())
            self._loop.remove_writer(conn.sock.fileno())
            conn.sock.close()
        return conn.outbox.clear()

    def write(self, frame: bytes) -> WriteResult:
        conn = self._current
        if conn is None:
            return WriteResult.NOT_CONNECTED
        return conn.outbox.push(frame, lambda: self._loop.call_soon(lambda: self._flush(conn)))

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
        if conn is self._current:
            self._events.channel_written(conn.outbox.queued)

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

    @property
    def pending(self) -> int:
        return self._outbox.queued

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
        unsent = self._outbox.clear()
        self._events.host_disconnected(detail, unsent)
        self._check_timer = self._loop.call_later(self._poll_interval, self._check)

    def write(self, frame: bytes) -> WriteResult:
        if not self._connected:
            return WriteResult.NOT_CONNECTED
        return self._outbox.push(frame, lambda: self._loop.call_soon(self._flush))

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
        self._events.channel_written(self._outbox.queued)

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


def _is_answer(datagram: bytes) -> bool:
    """Whether a datagram for an application is an ack or a nack (parsed: rare path)."""
    try:
        data = json.loads(datagram)
    except ValueError:
        return False
    inner = data.get("data") if isinstance(data, dict) else None
    return isinstance(inner, dict) and inner.get("msg_type") in ("nack", "broadcast_ack")


class _AppQueue:
    """Datagrams waiting, in order, for one application whose kernel queue was full."""

    __slots__ = ("datagrams", "held", "size", "took_at")

    def __init__(self, now: float) -> None:
        self.datagrams: deque[bytes] = deque()
        self.size = 0
        #: When the application last took a datagram from this queue (or it was made).
        self.took_at = now
        #: The newest datagram that found the queue full: it goes once there is room
        #: (after those waiting, before any later one), so that the gap is seen.
        self.held: bytes | None = None

    def append(self, datagram: bytes) -> None:
        self.datagrams.append(datagram)
        self.size += len(datagram)

    def popleft(self) -> None:
        self.size -= len(self.datagrams.popleft())


def no_host_nack(data: JsonObject) -> JsonObject | None:
    """The nack answering a request `data` sent while no host is connected; None for a nack.

    The original's format (spec section 4): `version`, `msg_type`,
    `orig_msg_type` (the request's `msg_type` when it is a string, else
    "unknown"), `log_msg`, and our `id` when the request carried a
    non-negative integer one.
    """
    msg_type = data.get("msg_type")
    if msg_type == "nack":  # never answer a nack with a nack
        return None
    nack: JsonObject = {
        "version": VERSION,
        "msg_type": "nack",
        "orig_msg_type": msg_type if isinstance(msg_type, str) else "unknown",
        "log_msg": NO_HOST_LOG_MSG,
    }
    ident = data.get("id")
    if isinstance(ident, int) and not isinstance(ident, bool) and ident >= 0:
        nack["id"] = ident
    return nack


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
        # Reading applications: stopped while the channel is above its high-water
        # mark (`_backpressure`), while an application that reads is behind
        # (`_yielding`: receivers first), or for a moment after a receive error
        # (`_resting`).
        self._reading_apps = False
        self._backpressure = False
        self._yielding = False
        self._resting = False
        # Datagrams waiting for applications, by destination address (only non-empty queues).
        self._waiting: dict[str, _AppQueue] = {}
        # Applications an answer was lost for: later answers to them are dropped too.
        self._answers_lost: set[str] = set()
        self._retry_timer: _Timer | None = None
        self._bursts = BurstReader()

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
            self._sock = AbstractSocket(config.address, send_buffer=AGENT_SEND_BUFFER)
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
        _check_dgram_qlen()
        log.info(
            "guest agent ready: applications at abstract %r, channel %s",
            config.address,
            config.describe_channel(),
        )
        self._update_apps_reader()
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
            waiting = sum(len(q.datagrams) + (q.held is not None) for q in self._waiting.values())
            if waiting:
                self.counters.drop(Reason.APP_NOT_READING, waiting)
            self._waiting.clear()
            self._drops.close()
            loop.close()
            log.info("guest agent stopped; counters: %s", self.counters.describe())

    # -- applications -> host

    def _update_apps_reader(self) -> None:
        """Read the applications' socket unless backpressure or a pause says not to."""
        assert self._sock is not None
        wanted = not (self._backpressure or self._yielding or self._resting)
        if wanted == self._reading_apps:
            return
        self._reading_apps = wanted
        if wanted:
            self._loop.add_reader(self._sock.fileno(), self._apps_readable)
        else:
            self._loop.remove_reader(self._sock.fileno())

    def _apps_readable(self) -> None:
        """Take up to `BATCH` queued datagrams, then let other work run."""
        assert self._sock is not None
        for count in range(BATCH):
            if count == 1:
                # In a busy stream, let the sending app go on before reading more (one
                # wake-up and one write toward the host for its burst, not one per datagram).
                self._bursts.woken()
            if not self._reading_apps:  # the channel filled up: leave the rest in the kernel
                return
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
        self._resting = True
        self._update_apps_reader()

        def resume() -> None:
            self._resting = False
            self._update_apps_reader()

        self._loop.call_later(_RECEIVE_ERROR_PAUSE, resume)

    def _from_app(self, datagram: Datagram) -> None:
        channel = self._channel
        assert channel is not None
        sender = datagram.sender
        if channel.connected and sender is not None and not datagram.truncated:
            # What the client library sends is stamped without being parsed and encoded again.
            frame = guest_frame_of_datagram(datagram.data, sender)
            if frame is not None and self._to_channel(channel, frame, sender):
                return
        envelope = app_envelope(datagram, self._drops)
        if envelope is None:
            return
        assert envelope.source_addr is not None  # stamped by app_envelope
        if not self._to_channel(channel, encode_guest_frame(envelope), envelope.source_addr):
            self._no_host(envelope)

    def _to_channel(self, channel: _Channel, frame: bytes, sender: str) -> bool:
        """Queue `frame` toward the host; False when no host is connected (nothing done)."""
        result = channel.write(frame)
        if result is WriteResult.QUEUED:
            self.counters.to_channel += 1
            if channel.pending > self.config.channel_high_water and not self._backpressure:
                self._backpressure = True
                self.counters.apps_paused += 1
                self._update_apps_reader()
                self._drops.note(
                    "backpressure",
                    f"{channel.pending} bytes wait toward the host: applications "
                    "are not read until it takes them",
                    level=logging.INFO,
                )
        elif result is WriteResult.NOT_CONNECTED:
            return False
        else:
            self._drops.drop(
                Reason.CHANNEL_QUEUE_FULL,
                f"a message from {sender!r}: the host is not reading the channel",
            )
        return True

    def _no_host(self, envelope: Envelope) -> None:
        """No host to send `envelope` to: a nack for the server-group service, else a drop."""
        what = f"a message from {envelope.source_addr!r} to {envelope.dest_addr!r}"
        nack = no_host_nack(envelope.data) if envelope.dest_addr == SERVER_GROUP_ADDR else None
        if nack is None:
            self._drops.drop(
                Reason.HOST_NOT_CONNECTED, f"{what}: no host is connected to the channel"
            )
            return
        self.counters.nacked += 1
        self._drops.note(
            Reason.HOST_NOT_CONNECTED,
            f"{what}: no host is connected to the channel; answered with a nack",
            level=logging.INFO,
        )
        assert envelope.source_addr is not None  # stamped by app_envelope
        self._deliver(
            envelope.source_addr,
            encode_delivery(Envelope(source_addr=SERVER_GROUP_ADDR, data=nack)),
        )

    def channel_written(self, pending: int) -> None:
        if self._backpressure and pending <= self.config.channel_low_water:
            self._backpressure = False
            self._update_apps_reader()
            log.debug("%d bytes wait toward the host: reading applications again", pending)

    # -- host -> applications (the channel's events)

    def host_connected(self, detail: str) -> None:
        self._decoder = ChannelDecoder()  # a new host starts a new stream
        log.info("host connected: %s", detail)

    def host_disconnected(self, detail: str, unsent: int) -> None:
        log.info("host disconnected: %s", detail)
        if unsent:
            self._drops.drop(
                Reason.LOST_AT_DISCONNECT,
                f"{unsent} message(s) not yet written toward the host that went away",
                count=unsent,
            )
        self.channel_written(0)

    def channel_data(self, data: bytes) -> None:
        try:
            for line in self._decoder.feed_lines(data):
                if isinstance(line, Dropped):
                    self._drops.drop(line.reason, f"from the host: {line.detail}")
                    continue
                # The host's own frames are cut, not parsed and encoded again.
                fast = delivery_of_frame(line)
                if fast is not None:
                    self.counters.from_channel += 1
                    self._deliver(*fast)
                    continue
                item = decode_line(line)
                if isinstance(item, Dropped):
                    self._drops.drop(item.reason, f"from the host: {item.detail}")
                else:
                    self.counters.from_channel += 1
                    self._to_app(item)
        except Exception:
            log_bug(log, "the guest agent's channel handler")

    def _to_app(self, envelope: Envelope) -> None:
        if envelope.dest_addr is None:
            self._drops.drop(Reason.NO_DEST_ADDR, "a message from the host")
            return
        self._deliver(envelope.dest_addr, encode_delivery(envelope))

    def _deliver(self, dest: str, datagram: bytes) -> None:
        """Send `datagram` to the application at `dest` now, or after those waiting for it."""
        if len(datagram) > MAX_DATAGRAM:
            self._drops.drop(
                Reason.TOO_BIG, f"a message for {dest!r} would be a datagram over 4095 bytes"
            )
            return
        if dest in self._answers_lost and _is_answer(datagram):
            self._lose_answer(dest, 0)
            return
        waiting = self._waiting.get(dest)
        if waiting is None:
            result = self._send(dest, datagram)
            if result is None or not result.later:
                return
            waiting = self._waiting[dest] = _AppQueue(time.monotonic())
            self._arm_retry()
        config = self.config
        self._release_held(waiting)
        # A datagram held for lack of room is older than this one: nothing overtakes it.
        if waiting.held is not None or not self._has_room(waiting, datagram):
            if not _is_answer(datagram):
                # The newest is kept (held), the one held before it dropped: the
                # application gets the oldest, then the newest, and sees the gap.
                if waiting.held is not None:
                    self._drops.drop(
                        Reason.APP_NOT_READING,
                        f"{dest!r} does not read its messages: {len(waiting.datagrams)} "
                        f"datagrams ({waiting.size} bytes) already wait for it",
                    )
                waiting.held = datagram
                return
            bytes_bound = config.app_queue_bytes + APP_ANSWER_ALLOWANCE_BYTES
            if (
                len(waiting.datagrams) >= config.app_queue_limit + APP_ANSWER_ALLOWANCE
                or waiting.size + len(datagram) > bytes_bound
            ):
                self._answers_lost.add(dest)
                self._lose_answer(dest, len(waiting.datagrams))
                return
            # The answer goes, and the held delivery, if any, before it (one datagram more).
            self._queue_held(waiting)
        waiting.append(datagram)
        self.counters.delivery_queued += 1
        if len(waiting.datagrams) > config.app_behind_high and not self._yielding:
            self._update_yielding()

    def _has_room(self, waiting: _AppQueue, datagram: bytes) -> bool:
        config = self.config
        return (
            len(waiting.datagrams) < config.app_queue_limit
            and waiting.size + len(datagram) <= config.app_queue_bytes
        )

    def _release_held(self, waiting: _AppQueue) -> None:
        """Queue the datagram held for lack of room once there is room for it."""
        if waiting.held is not None and self._has_room(waiting, waiting.held):
            self._queue_held(waiting)

    def _queue_held(self, waiting: _AppQueue) -> None:
        """Queue the datagram held for lack of room (if any), whatever the room."""
        held = waiting.held
        if held is not None:
            waiting.held = None
            waiting.append(held)
            self.counters.delivery_queued += 1

    def _lose_answer(self, dest: str, waiting: int) -> None:
        """Drop an ack or nack for `dest` (see "Answers" in the module's docstring)."""
        self._drops.drop(
            Reason.ANSWER_LOST,
            f"an ack or nack for {dest!r}, which does not read its messages "
            f"({waiting} datagrams wait for it); its pending broadcasts will end unconfirmed",
            level=logging.ERROR,
        )

    def _send(
        self, dest: str, datagram: bytes, *, count_not_bound: bool = True
    ) -> SendResult | None:
        """One send; counts and logs every outcome but those to retry later (None: another error).

        A retry of what waited counts NOT_BOUND itself, for the whole queue.
        """
        assert self._sock is not None
        try:
            result = self._sock.send_to(dest, datagram)
        except OSError as exc:
            self._drops.drop(Reason.SEND_FAILED, f"to {dest!r}: {exc}")
            return None
        if result is SendResult.SENT:
            self.counters.to_apps += 1
        elif result is SendResult.NOT_BOUND and count_not_bound:
            self._drops.drop(
                Reason.APP_NOT_BOUND,
                f"a message for {dest!r}: nothing is bound there",
                level=logging.DEBUG,
            )
        elif result is SendResult.TOO_BIG:
            self._drops.drop(
                Reason.TOO_BIG, f"a message for {dest!r}: the kernel refused it as too big"
            )
        return result

    def _arm_retry(self) -> None:
        if self._retry_timer is None:
            self._retry_timer = self._loop.call_later(
                self.config.app_retry_interval, self._retry_waiting
            )

    def _update_yielding(self) -> None:
        """Receivers first: hold the applications' sends while one that reads is behind."""
        config = self.config
        now = time.monotonic()
        mark = config.app_behind_low if self._yielding else config.app_behind_high
        behind = [
            dest
            for dest, waiting in self._waiting.items()
            if len(waiting.datagrams) > mark and now - waiting.took_at < config.app_stall_after
        ]
        yielding = bool(behind)
        if yielding == self._yielding:
            return
        self._yielding = yielding
        if yielding:
            self.counters.apps_yielded += 1
            self._drops.note(
                "receivers first",
                f"{', '.join(repr(d) for d in behind)} is behind on reading: sends from "
                "applications wait until it catches up",
                level=logging.INFO,
            )
        self._update_apps_reader()

    def _retry_waiting(self) -> None:
        """Send what waits for each application, in order, until its queue is full again."""
        self._retry_timer = None
        now = time.monotonic()
        for dest, waiting in list(self._waiting.items()):
            before = len(waiting.datagrams)
            while waiting.datagrams:
                result = self._send(dest, waiting.datagrams[0], count_not_bound=False)
                if result is not None and result.later:
                    break
                if result is SendResult.NOT_BOUND:
                    # The application went away: what waits for it goes too.
                    self._drops.drop(
                        Reason.APP_NOT_BOUND,
                        f"{len(waiting.datagrams)} message(s) waited for {dest!r}, "
                        "which has gone away",
                        level=logging.INFO,
                        count=len(waiting.datagrams) + (waiting.held is not None),
                    )
                    waiting.datagrams.clear()
                    waiting.size = 0
                    waiting.held = None
                    break
                waiting.popleft()
            if len(waiting.datagrams) < before:
                waiting.took_at = now
            self._release_held(waiting)  # sent at the next retry
            if not waiting.datagrams:
                del self._waiting[dest]
        if self._yielding or self._waiting:
            self._update_yielding()
        if self._waiting:
            self._arm_retry()


def _check_dgram_qlen() -> None:
    """Warn when the kernel lets each socket hold so few datagrams that it slows everyone."""
    qlen = dgram_qlen()
    if qlen is not None and qlen < MIN_DGRAM_QLEN:
        log.warning(
            "net.unix.max_dgram_qlen is %d in this server: applications will be slowed: "
            "raise net.unix.max_dgram_qlen (to %d, say) before the agent starts",
            qlen,
            GUEST_DGRAM_QLEN,
        )


class Companion(Protocol):
    """An agent that runs beside the guest agent, on a thread of its own (the scale agent)."""

    def run(self) -> None:
        """Serve until `stop` is called."""

    def stop(self) -> None:
        """End `run` (called from another thread)."""


#: How long a companion may take to end once asked to stop.
COMPANION_STOP_TIMEOUT = 5.0


class _Companions:
    """The companions' threads: started once the guest agent serves, stopped with it."""

    def __init__(self, companions: Sequence[Companion]) -> None:
        self._companions = list(companions)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for companion in self._companions:
            thread = threading.Thread(
                target=self._run, args=(companion,), name=type(companion).__name__, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _run(companion: Companion) -> None:
        try:
            companion.run()
        except ServergroupError as exc:
            log.error("%s did not start: %s", type(companion).__name__, exc)
        except Exception:
            log_bug(log, f"the guest agent's companion {type(companion).__name__}")

    def stop(self) -> None:
        for companion in self._companions:
            companion.stop()
        for thread in self._threads:
            thread.join(COMPANION_STOP_TIMEOUT)
            if thread.is_alive():
                log.warning("%s did not stop within %g s", thread.name, COMPANION_STOP_TIMEOUT)


def run_guest(config: GuestConfig, companions: Sequence[Companion] = ()) -> None:
    """Run the guest agent (and its `companions`) until SIGTERM or SIGINT; both end it cleanly.

    Raises `ConfigError`/`PermissionNeeded` when the channel cannot be set up
    and `AddressInUse` when another agent has the address.
    """
    agent = GuestAgent(config)
    threads = _Companions(companions)
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in stops}
    for signum in stops:
        signal.signal(signum, lambda _signum, _frame: agent.stop())
    try:
        agent.run(on_ready=threads.start)
    finally:
        threads.stop()
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


class GuestExtension(Protocol):
    """What an entry point adds to the guest agent: options, and companions built from them."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def companions(self, args: argparse.Namespace) -> Sequence[Companion]:
        """The companions the parsed `args` ask for; ServergroupError (one sentence) if wrong."""
        ...


def _whole_number(text: str) -> int:
    """An argparse type: a whole number (its default from the environment is text too)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def main(argv: Sequence[str] | None = None, *, extensions: Sequence[GuestExtension] = ()) -> int:
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
        "--app-queue-limit",
        type=_whole_number,
        default=os.environ.get("SERVERGROUP_GUEST_APP_QUEUE_LIMIT", DEFAULT_APP_QUEUE_LIMIT),
        metavar="N",
        help="datagrams that may wait for one application before more are dropped (it sees "
        f"the gap) [env SERVERGROUP_GUEST_APP_QUEUE_LIMIT; default {DEFAULT_APP_QUEUE_LIMIT}]",
    )
    parser.add_argument(
        "--app-queue-bytes",
        type=_whole_number,
        default=os.environ.get("SERVERGROUP_GUEST_APP_QUEUE_BYTES", DEFAULT_APP_QUEUE_BYTES),
        metavar="BYTES",
        help="the same bound in bytes [env SERVERGROUP_GUEST_APP_QUEUE_BYTES; default "
        f"{DEFAULT_APP_QUEUE_BYTES}]",
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
    for extension in extensions:
        extension.add_arguments(parser)
    args = parser.parse_args(argv)
    verbose: int = args.verbose
    setup_logging(
        logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        json=args.log_json,
    )
    try:
        config = guest_config(
            args.channel,
            args.channel_listen,
            args.address,
            args.ready_file,
            app_queue_limit=args.app_queue_limit,
            app_queue_bytes=args.app_queue_bytes,
        )
        companions = [c for extension in extensions for c in extension.companions(args)]
        run_guest(config, companions)
    except ServergroupError as exc:
        sys.stderr.write(f"servergroup guest: {exc}\n")
        return exc.exit_status
    return 0

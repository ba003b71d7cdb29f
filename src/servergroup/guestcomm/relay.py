"""The host side of the channel: one connection per guest, found by watching a directory.

The hypervisor (or the lab) puts one UNIX stream socket per guest in the
channel directory, named `cgcs.messaging.<instance>.sock` (spec section 2);
the lab puts symlinks to sockets there. `ChannelRelay` watches the directory
with inotify (and scans it at start), connects to each guest's socket,
retries every `retry_interval` while the guest agent is not listening, and
reconnects after the guest closes, for as long as the file exists. A file
that goes away (deleted, or moved out by a live migration) closes that
guest's link.

Envelopes from a guest get `source_instance` set to the guest's instance
name (by the connection's decoder, as it decodes them: one envelope made
per line) and go to an in-process route registered for their `dest_addr` (the
group service routes `cgcs.server_grp`), or else as a datagram to the host
application bound at that abstract name. Host applications send datagrams
to the relay's own abstract `address`, naming the guest in `dest_instance`.

Flow control, both ways (docs/design/messaging.md, "Flow control"):

- **From a guest.** `throttle(instance, True)` stops reading that guest's
  channel (`transport.pause_reading()`), `throttle(instance, False)` reads
  it again. The group service calls it from the high- and low-water marks
  of its per-guest queue, so a guest that sends faster than its broadcasts
  are stored fills the channel socket's kernel buffer and then its own
  agent's buffer, and is slowed there; nothing is dropped for it. A
  reconnected channel starts unpaused (the service forgets the guest's queue
  on the disconnect, which `on_change` reports).
- **Toward a guest.** What waits to be written to one guest is bounded by
  `queue_limit` bytes (4 MiB by default, `servers.channel_queue_limit` in the
  host daemon), in the transport's write buffer.
  A message that would take a guest's buffer past it is dropped for that
  guest and counted (`channel queue full`); its apps see the gap in the
  broadcasts' `seq`. A guest that does not read (its server paused or
  frozen, its agent stopped) so loses its own messages only: the other
  guests are written to as before, never slowed, and the host holds at most
  `queue_limit` bytes per guest. So that the gap is seen even when nothing
  follows it (a burst whose end did not fit), `write_frames` keeps the
  newest message of a write that lost frames aside (the last `newest`
  frames, replacing what it kept before, which is then dropped) and writes
  it once the guest has drained its buffer (`resume_writing`) or before
  anything written to it later: the guest gets the oldest messages, the
  gap, then the newest; never out of order, and at most one message more
  per guest. `send_to_guests` encodes an envelope once
  and writes the same bytes to every guest it names (a broadcast's fan-out),
  returning the guests it could not write to. What is written to one guest
  in one round of the event loop goes out in one write at the end of the
  round (see `_Connection`); it counts toward `queue_limit` meanwhile.
  Answers to a guest's own requests (its broadcasts' acks and nacks) are
  not dropped at `queue_limit`: they may take `answer_allowance` more
  (`send_to_guests(..., answer=True)`), since a dropped nack followed by a
  cumulative ack would acknowledge a refused broadcast.

Nothing a guest or an application sends stops the relay; a handler's
exception is logged as a BUG and the relay carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from asyncinotify import Inotify, Mask

from servergroup.common import metrics
from servergroup.common.component import ComponentHealth, HealthState
from servergroup.common.errors import ConfigError, UsageError
from servergroup.common.logsetup import BUG_MARKER, log_bug
from servergroup.guestcomm.drops import Counters, DropLog, Reason
from servergroup.guestcomm.protocol import (
    MAX_INSTANCE_LENGTH,
    MAX_LINE,
    MESSAGING_ADDR,
    ChannelDecoder,
    Dropped,
    Envelope,
    encode_host_frame,
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

#: Channel socket names in the channel directory (spec section 2).
CHANNEL_FILE = re.compile(r"cgcs\.messaging\.(?P<instance>.+)\.sock")
#: Bytes that may wait to be written to one guest before its messages are dropped (the
#: host daemon takes it from `servers.channel_queue_limit`, the same by default).
DEFAULT_QUEUE_LIMIT = 4 << 20
#: Bytes beyond `queue_limit` that answers to a guest's own requests (acks and nacks
#: of its broadcasts) may still take: an answer is dropped only past both.
DEFAULT_ANSWER_ALLOWANCE = 1 << 20
#: How long one connection attempt may take (a full listen backlog makes it wait).
CONNECT_TIMEOUT = 5.0
#: Connection errors that mean "the guest agent is not listening (yet)": retried quietly.
_NOT_LISTENING = {errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN}
_WATCH_MASK = (
    Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)

#: An in-process destination: `handler(instance, envelope)`, plain or async.
Handler = Callable[[str, Envelope], Awaitable[None] | None]
#: `callback(instance, connected)`, called when a guest's link comes up or goes down.
ChangeCallback = Callable[[str, bool], None]


def instance_of(name: str) -> str | None:
    """The instance named by a channel file name, or None if it is not one."""
    match = CHANNEL_FILE.fullmatch(name)
    return match["instance"] if match else None


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended.

    `asyncio.wait` neither raises the task's CancelledError nor swallows the
    caller's own cancellation (it propagates if the caller is cancelled while
    waiting); catching CancelledError and asking `cancelling()` instead goes
    wrong when the caller carries a cancellation request that was already
    handled (pytest-asyncio's fixture teardown does).
    """
    task.cancel()
    await asyncio.wait({task})


#: Bytes queued for one guest in one loop round beyond which they are written at once.
FLUSH_AT = 64 << 10
#: The transport's high-water mark (asyncio's default), or a quarter of a smaller bound.
_RESUME_HIGH = 64 << 10


class _Connection(asyncio.Protocol):
    """One connection to a guest's channel socket.

    What is written to the guest during one round of the event loop (the
    frames of several batches a watch response held, acks, replies) is
    queued and handed to the transport in one write once the round's
    callbacks have run (`call_soon`), or at once past `FLUSH_AT` bytes: one
    system call and one wake-up of the guest's agent per round, not one per
    writer. Queued bytes count toward the guest's bound like the transport's
    buffer; they are lost with the connection, as that buffer is.
    """

    def __init__(self, link: _GuestLink) -> None:
        self._link = link
        # Envelopes come out stamped with the guest's instance name (spec section 3).
        self._decoder = ChannelDecoder(source_instance=link.instance)
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_scheduled = False
        #: An answer was dropped on this connection: later ones are dropped too (see
        #: `ChannelRelay.send_to_guests`); a new connection starts afresh.
        self.answers_lost = False
        #: The newest message of a `write_frames` that lost frames, written once the
        #: guest has drained its buffer (or before what is written to it next).
        self.held: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # A message is held only when the buffer is near `queue_limit`: above this
        # high-water mark, so that `resume_writing` comes once it has drained.
        transport.set_write_buffer_limits(high=min(_RESUME_HIGH, self._link.relay.queue_limit // 4))

    @property
    def writable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    @property
    def pending(self) -> int:
        """Bytes queued this round, not yet handed to the transport."""
        return self._pending_size

    @property
    def queued(self) -> int:
        """Bytes waiting to be written: queued this round, and in the transport's buffer."""
        buffered = 0 if self.transport is None else self.transport.get_write_buffer_size()
        return buffered + self._pending_size

    def queue(self, frames: Sequence[bytes]) -> None:
        """Write `frames` at the end of this loop round, after what was queued before."""
        self._pending.extend(frames)
        self._pending_size += sum(map(len, frames))
        if self._pending_size >= FLUSH_AT:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Hand what is queued to the transport now."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_size = 0
        if self.writable:
            assert self.transport is not None
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def resume_writing(self) -> None:
        # The transport's buffer went below its low-water mark (it was above its
        # high-water mark, as it is whenever a message had to be held): room again.
        if self.held and self.writable:
            held, self.held = self.held, []
            self.queue(held)

    def data_received(self, data: bytes) -> None:
        try:
            items = self._decoder.feed(data)
        except Exception:
            log_bug(log, f"the channel decoder of {self._link.instance}")
            return
        self._link.relay._from_guest(self._link.instance, items)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pending.clear()
        self._pending_size = 0
        self.held = []
        if not self.closed.done():
            self.closed.set_result(None)


class _GuestLink:
    """Keeps one guest connected while its channel file exists."""

    def __init__(
        self, relay: ChannelRelay, instance: str, path: Path, identity: tuple[int, int]
    ) -> None:
        self.relay = relay
        self.instance = instance
        self.path = path
        self.identity = identity
        self.connection: _Connection | None = None
        self.task = asyncio.create_task(self._run(), name=f"relay-link-{instance}")

    @property
    def connected(self) -> bool:
        conn = self.connection
        return conn is not None and conn.transport is not None and not conn.transport.is_closing()

    def kick(self) -> None:
        """The file was replaced: drop the current connection and connect anew."""
        if self.connection is not None and self.connection.transport is not None:
            self.connection.transport.abort()

    async def close(self) -> None:
        await _cancel_and_wait(self.task)

    async def _run(self) -> None:
        relay = self.relay
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that arrives as the connection completes.
                    with reachable_path(self.path) as where:
                        async with asyncio.timeout(CONNECT_TIMEOUT):
                            _, conn = await loop.create_unix_connection(
                                lambda: _Connection(self), where
                            )
                except (OSError, TimeoutError) as exc:
                    failures += 1
                    self._connect_failed(exc, failures)
                    await asyncio.sleep(relay.retry_interval)
                    continue
                failures = 0
                self.connection = conn
                connected_at = time.monotonic()
                relay._changed(self.instance, True)
                try:
                    await conn.closed
                finally:
                    self.connection = None
                    if conn.transport is not None:
                        conn.transport.abort()
                    relay._changed(self.instance, False)
                # A guest that closes at once (or another host that keeps taking the
                # channel) must not make us spin: reconnect at most once per interval.
                if time.monotonic() - connected_at < relay.retry_interval:
                    await asyncio.sleep(relay.retry_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log_bug(log, f"the channel link of {self.instance}")

    def _connect_failed(self, exc: Exception, failures: int) -> None:
        code = exc.errno if isinstance(exc, OSError) else None
        if code in _NOT_LISTENING:
            # Normal while a guest boots or restarts: say it once per outage.
            if failures == 1:
                log.info("guest %s not listening yet (%s); retrying", self.instance, exc)
            return
        self.relay._drops.note(
            "connect failed", f"to {self.instance} at {self.path}: {exc or 'timed out'}"
        )

    def throttle(self, paused: bool) -> bool:
        """Stop or resume reading the channel; False when it is not connected."""
        conn = self.connection
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return False
        if paused:
            conn.transport.pause_reading()
        else:
            conn.transport.resume_reading()
        return True

    def buffered(self) -> int:
        """Bytes waiting to be written to the guest (0 when not connected)."""
        conn = self.connection
        return 0 if conn is None else conn.queued

    def room(self, limit: int) -> int | None:
        """Bytes that may still be buffered for this guest; None when it is not connected."""
        conn = self.connection
        if conn is None or not conn.writable:
            return None
        return max(0, limit - conn.queued)

    def write_joined(self, frames: Sequence[bytes]) -> None:
        """Write `frames` with this round's other writes (the caller checked `room`)."""
        conn = self.connection
        assert conn is not None
        conn.queue(frames)

    def pending(self) -> int:
        """Bytes queued for the end of this loop round (not yet handed to the transport)."""
        conn = self.connection
        return 0 if conn is None else conn.pending

    def flush(self) -> None:
        """Hand what waits for the end of the round to the transport now (which hands
        the kernel what its socket buffer takes): the room is then what it really is."""
        conn = self.connection
        if conn is not None:
            conn.flush()

    def write(self, frame: bytes, limit: int, *, answer_limit: int | None = None) -> Reason | None:
        """Queue `frame`, or say why not. With `answer_limit` the frame is an answer
        to the guest's own request, which may take the buffer up to that bound, and
        is refused (with every later answer on this connection) only past it."""
        conn = self.connection
        if conn is None or not conn.writable:
            return Reason.GUEST_NOT_CONNECTED
        if answer_limit is not None:
            if conn.answers_lost:
                return Reason.ANSWER_LOST
            limit = answer_limit
        if conn.queued + len(frame) > limit:
            conn.flush()
            if conn.queued + len(frame) > limit:
                if answer_limit is None:
                    return Reason.CHANNEL_QUEUE_FULL
                conn.answers_lost = True
                return Reason.ANSWER_LOST
        # The newest message of an earlier `write_frames` that lost frames, if any, is
        # older than this one, so it goes first (it is the "one message more" of the bound).
        frames, conn.held = (*conn.held, frame), []
        conn.queue(frames)
        return None


class ChannelRelay:
    """Relays envelopes between guests' channels and host applications or routes.

    A component of the host daemon (`common.component`): `start`, `stop`, `health`.
    """

    name = "relay"

    def __init__(
        self,
        channel_dir: Path,
        *,
        address: str = MESSAGING_ADDR,
        retry_interval: float = 1.0,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        answer_allowance: int = DEFAULT_ANSWER_ALLOWANCE,
    ) -> None:
        if retry_interval <= 0:
            raise ConfigError("the relay's retry interval must be positive.")
        self.channel_dir = Path(channel_dir)
        self.address = address
        self.retry_interval = retry_interval
        self.queue_limit = queue_limit
        self.answer_allowance = answer_allowance
        self.counters = Counters()
        self._drops = DropLog(log, self.counters)
        self._routes: dict[str, Handler] = {}
        self._callbacks: list[ChangeCallback] = []
        self._links: dict[str, _GuestLink] = {}
        self._connected: set[str] = set()
        self._handler_tasks: set[asyncio.Future[None]] = set()
        self._sock: AbstractSocket | None = None
        self._inotify: Inotify | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    # -- public API

    async def start(self) -> None:
        """Bind the host address, start watching the channel directory, connect to guests."""
        if self._sock is not None:
            raise UsageError("the channel relay is already started.")
        try:
            self.channel_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the channel directory {self.channel_dir}: {exc.strerror}."
            ) from None
        self._sock = AbstractSocket(self.address)
        inotify = Inotify()
        try:
            inotify.add_watch(self.channel_dir, _WATCH_MASK)
        except OSError as exc:
            inotify.close()
            self._sock.close()
            self._sock = None
            raise ConfigError(
                f"cannot watch the channel directory {self.channel_dir}: {exc.strerror}."
            ) from None
        self._inotify = inotify
        # Watch first, then scan: a file created in between is seen twice, harmlessly.
        self._rescan()
        self._tasks = [
            asyncio.create_task(self._watch(inotify), name="relay-watch"),
            asyncio.create_task(self._serve_apps(), name="relay-apps"),
        ]
        log.info(
            "channel relay ready: watching %s, host applications at abstract %r",
            self.channel_dir,
            self.address,
        )

    async def stop(self) -> None:
        """Close every link and socket; the relay can not be started again."""
        for task in self._tasks:
            await _cancel_and_wait(task)
        self._tasks = []
        for instance in list(self._links):
            await self._remove(instance)
        for pending in list(self._handler_tasks):
            pending.cancel()
        if self._handler_tasks:
            await asyncio.wait(self._handler_tasks, timeout=1.0)
        self._stopped = True
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._sock is not None:
            self._sock.close()
        self._drops.close()
        log.info("channel relay stopped; counters: %s", self.counters.describe())

    async def __aenter__(self) -> ChannelRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def route(self, addr: str, handler: Handler) -> Callable[[], None]:
        """Send envelopes from guests whose `dest_addr` is `addr` to `handler` instead
        of the host application bound at `addr`; returns a function that undoes it."""
        if addr in self._routes:
            raise UsageError(f"{addr!r} is already routed.")
        self._routes[addr] = handler

        def unroute() -> None:
            if self._routes.get(addr) is handler:
                del self._routes[addr]

        return unroute

    async def send_to_guest(self, instance: str, envelope: Envelope) -> bool:
        """Write `envelope` to the guest's channel; False when it is not connected or
        its write buffer is full (the message is dropped and counted)."""
        reason = self._write(instance, envelope)
        if reason is None:
            return True
        level = logging.DEBUG if reason is Reason.GUEST_NOT_CONNECTED else logging.WARNING
        self._drops.drop(reason, f"a message for {instance} to {envelope.dest_addr!r}", level=level)
        return False

    def send_to_guests(
        self, instances: Iterable[str], envelope: Envelope, *, answer: bool = False
    ) -> list[str]:
        """Write `envelope` to each guest's channel, encoded once; the guests not written to.

        A guest is not written to when it is not connected or when the frame
        would take its write buffer past `queue_limit`; each such message is
        dropped and counted, as by `send_to_guest`.

        `answer`: the envelope answers the guest's own request (a broadcast's
        ack or nack), which its application counts on: a cumulative ack that
        reached it after a dropped nack would acknowledge a refused broadcast.
        An answer may take the buffer `answer_allowance` bytes past
        `queue_limit` (an application's answers are bounded by its window of
        pending broadcasts); past that it is dropped, and so is every later
        answer on that connection (`answer lost`, logged as an error), so its
        applications' pending broadcasts end unconfirmed, never wrongly
        acknowledged. A new connection starts afresh.
        """
        frame = encode_host_frame(envelope)
        answer_limit = self.queue_limit + self.answer_allowance if answer else None
        failed: list[str] = []
        for instance in instances:
            reason = self._write_frame(instance, frame, answer_limit)
            if reason is None:
                continue
            failed.append(instance)
            level = logging.DEBUG if reason is Reason.GUEST_NOT_CONNECTED else logging.WARNING
            if reason is Reason.ANSWER_LOST:
                level = logging.ERROR
            self._drops.drop(
                reason, f"a message for {instance} to {envelope.dest_addr!r}", level=level
            )
        return failed

    def write_frames(self, instance: str, frames: Sequence[bytes], *, newest: int = 0) -> int:
        """Write host frames (`encode_host_frame`) to one guest (one write); how many
        went (a held frame counts as gone; the call that drops it later counts it).

        The frames that would take the guest's write buffer past `queue_limit`
        (the last ones), or all of them when it is not connected, are dropped
        and counted, as by `send_to_guest`, except the last `newest` frames
        (the newest message, one frame per address it goes to): when frames
        are lost they are held and written once the guest has room, so that
        its applications see the gap even if nothing follows. One write for
        many frames is what keeps the fan-out of a batch of broadcasts cheap.
        """
        if not frames:
            return 0
        given = len(frames)
        link = self._links.get(instance)
        room = link.room(self.queue_limit) if link is not None else None
        conn = link.connection if link is not None and room is not None else None
        if conn is not None and conn.held:
            # Held from an earlier call: older than these, so written before them.
            frames = [*conn.held, *frames]
            conn.held = []
        taken = 0
        while link is not None and room is not None and taken < len(frames):
            # Handing queued frames to the transport gives the kernel what its socket
            # buffer takes at once, so the room is looked at again after it.
            start, size = taken, 0
            for frame in frames[start:]:
                if size + len(frame) > room or len(frame) > MAX_LINE:
                    break
                size += len(frame)
                taken += 1
            if taken == start:
                if len(frames[start]) > MAX_LINE or not link.pending():
                    break
                # Full of what waits for the end of the round: hand it on now.
                link.flush()
                room = link.room(self.queue_limit)
                continue
            link.write_joined(frames[start:taken])
            room = link.room(self.queue_limit)
        self.counters.to_channel += taken
        metrics.RELAYED_TO_GUEST.inc(taken)
        left = len(frames) - taken
        if left and conn is not None and newest > 0:
            conn.held = list(frames[max(taken, len(frames) - min(newest, given)) :])
            left -= len(conn.held)
        if left:
            reason = Reason.GUEST_NOT_CONNECTED if room is None else Reason.CHANNEL_QUEUE_FULL
            level = logging.DEBUG if reason is Reason.GUEST_NOT_CONNECTED else logging.WARNING
            self._drops.drop(reason, f"{left} message(s) for {instance}", level=level, count=left)
        return max(0, given - left)

    def throttle(self, instance: str, paused: bool) -> None:
        """Stop (`paused`) or resume reading the channel of `instance`.

        A guest that is not connected is left alone: its next connection
        starts reading, and the caller hears of the disconnect by `on_change`.
        """
        link = self._links.get(instance)
        if link is not None and link.throttle(paused):
            log.debug("channel of %s %s", instance, "paused" if paused else "resumed")

    def buffered(self, instance: str) -> int:
        """Bytes waiting to be written to `instance` (at most `queue_limit`)."""
        link = self._links.get(instance)
        return link.buffered() if link is not None else 0

    def connected(self) -> frozenset[str]:
        """The instances whose channel is connected now."""
        return frozenset(self._connected)

    def health(self) -> ComponentHealth:
        """Started or not, and how many of the guests found are connected."""
        if self._stopped:
            return ComponentHealth(state=HealthState.STOPPED, sentence="the relay is stopped")
        if not self._tasks:
            return ComponentHealth(state=HealthState.STARTING, sentence="the relay is not started")
        return ComponentHealth(
            state=HealthState.HEALTHY,
            sentence=(
                f"{len(self._connected)} of {len(self._links)} guest channel(s) in "
                f"{self.channel_dir} connected, {self.counters.dropped_total} message(s) dropped"
            ),
        )

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(instance, connected)` when a guest connects or disconnects;
        returns a function that unsubscribes."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    # -- guests

    def _write(self, instance: str, envelope: Envelope) -> Reason | None:
        return self._write_frame(instance, encode_host_frame(envelope))

    def _write_frame(
        self, instance: str, frame: bytes, answer_limit: int | None = None
    ) -> Reason | None:
        link = self._links.get(instance)
        if link is None:
            return Reason.GUEST_NOT_CONNECTED
        if len(frame) > MAX_LINE:
            return Reason.TOO_BIG
        reason = link.write(frame, self.queue_limit, answer_limit=answer_limit)
        if reason is None:
            self.counters.to_channel += 1
        return reason

    def _changed(self, instance: str, connected: bool) -> None:
        if connected:
            self._connected.add(instance)
        else:
            self._connected.discard(instance)
        log.info("guest %s %s", instance, "connected" if connected else "disconnected")
        for callback in list(self._callbacks):
            try:
                callback(instance, connected)
            except Exception:
                log_bug(log, "a channel relay on_change callback")

    def _from_guest(self, instance: str, items: list[Envelope | Dropped]) -> None:
        """Route what one read of a guest's channel held (envelopes stamped with `instance`)."""
        relayed = 0
        routes = self._routes
        for item in items:
            if item.__class__ is Dropped:
                assert isinstance(item, Dropped)
                self._drops.drop(item.reason, f"from {instance}: {item.detail}")
                continue
            assert isinstance(item, Envelope)
            relayed += 1
            if item.dest_addr is None:
                self._drops.drop(Reason.NO_DEST_ADDR, f"a message from {instance}")
                continue
            handler = routes.get(item.dest_addr)
            if handler is not None:
                self._call(handler, instance, item)
            else:
                self._deliver(item)
        if relayed:
            self.counters.from_channel += relayed
            metrics.RELAYED_FROM_GUEST.inc(relayed)

    def _call(self, handler: Handler, instance: str, envelope: Envelope) -> None:
        try:
            result = handler(instance, envelope)
        except Exception:
            log_bug(log, f"the route handler for {envelope.dest_addr!r}")
            return
        self.counters.to_apps += 1
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[None]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: unexpected error in an async route handler",
                BUG_MARKER,
                exc_info=task.exception(),
            )

    def _deliver(self, envelope: Envelope) -> None:
        assert self._sock is not None
        who = f"a message from {envelope.source_instance} for {envelope.dest_addr!r}"
        try:
            result = deliver(self._sock, envelope)
        except OSError as exc:
            self._drops.drop(Reason.SEND_FAILED, f"{who}: {exc}")
            return
        if result is SendResult.SENT:
            self.counters.to_apps += 1
        elif result is SendResult.NOT_BOUND:
            self._drops.drop(
                Reason.APP_NOT_BOUND, f"{who}: nothing is bound there", level=logging.DEBUG
            )
        elif result.later:
            self._drops.drop(Reason.APP_NOT_READING, f"{who}: its queue is full")
        else:
            self._drops.drop(Reason.TOO_BIG, f"{who}: the datagram would be over 4095 bytes")

    # -- host applications

    async def _serve_apps(self) -> None:
        assert self._sock is not None
        await serve_datagrams(self._sock, self._from_app, who="the channel relay")

    def _from_app(self, datagram: Datagram) -> None:
        self.counters.from_apps += 1
        envelope = app_envelope(datagram, self._drops)
        if envelope is None:
            return
        if envelope.dest_instance is None:
            self._drops.drop(Reason.NO_DEST_INSTANCE, f"a message from {envelope.source_addr!r}")
            return
        target = envelope.dest_instance
        reason = self._write(target, envelope)
        if reason is not None:
            self._drops.drop(reason, f"a message from {envelope.source_addr!r} for {target}")

    # -- the channel directory

    async def _watch(self, inotify: Inotify) -> None:
        while True:
            event = await inotify.get()
            try:
                await self._handle(event.mask, event.name)
            except Exception:
                log_bug(log, "the channel directory watch")

    async def _handle(self, mask: Mask, name: Path | None) -> None:
        if mask & Mask.Q_OVERFLOW:
            log.warning("inotify queue overflowed; rescanning %s", self.channel_dir)
            await self._rescan_and_prune()
            return
        if mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED):
            log.error("the channel directory %s went away; no guests are relayed", self.channel_dir)
            for instance in list(self._links):
                await self._remove(instance)
            return
        if name is None:
            return
        found = instance_of(name.name)
        if found is None:
            return
        instance = found
        if mask & (Mask.CREATE | Mask.MOVED_TO):
            self._appeared(instance, self.channel_dir / name)
        elif mask & (Mask.DELETE | Mask.MOVED_FROM):
            log.info("channel of %s removed", instance)
            await self._remove(instance)

    def _rescan(self) -> set[str]:
        found: set[str] = set()
        try:
            entries = list(os.scandir(self.channel_dir))
        except OSError as exc:
            log.error("cannot list the channel directory %s: %s", self.channel_dir, exc)
            return found
        for entry in entries:
            instance = instance_of(entry.name)
            if instance is not None:
                found.add(instance)
                self._appeared(instance, Path(entry.path))
        return found

    async def _rescan_and_prune(self) -> None:
        present = self._rescan()
        for instance in list(self._links):
            if instance not in present:
                await self._remove(instance)

    def _appeared(self, instance: str, path: Path) -> None:
        if len(instance.encode("utf-8", "surrogateescape")) > MAX_INSTANCE_LENGTH:
            self._drops.note(
                "bad channel name",
                f"ignoring {path.name}: the instance name is over {MAX_INSTANCE_LENGTH} bytes",
            )
            return
        try:
            st = os.lstat(path)
        except OSError:
            return  # already gone again; its delete event follows
        identity = (st.st_dev, st.st_ino)
        link = self._links.get(instance)
        if link is None:
            log.info("channel of %s found at %s", instance, path)
            self._links[instance] = _GuestLink(self, instance, path, identity)
        elif link.identity != identity:
            log.info("channel of %s replaced at %s; reconnecting", instance, path)
            link.identity = identity
            link.kick()

    async def _remove(self, instance: str) -> None:
        link = self._links.pop(instance, None)
        if link is not None:
            await link.close()
